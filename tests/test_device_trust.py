"""Tests for otad.device_trust: the path from a device identity to the anchors, by signature, dates and algorithms."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from otad import cms, device_trust
from tests.test_cms import APPLE, APPLE_ROOT, ZENTRAL, _Base, _issue, _key, _must, _pki


def _apple_anchors() -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(path.read_bytes()) for path in APPLE]


class ChainTests(_Base):
    """verify_chain and the real Apple device message."""

    def assertUntrusted(self, reason: str, function: Callable[..., object], *args: object) -> None:
        error = self.assertRaises(device_trust.UntrustedDevice, function, *args)
        self.assertEqual(str(error), reason)

    def test_zentral_fixture(self) -> None:
        """A real macOS 13 phase-2 body (BER, SHA-1, no attributes) verifies."""
        verified = cms.verify(ZENTRAL.read_bytes())
        self.assertIn(b"<string>78897E40-F532-5DE0-A7DC-56BAC5CEEB9C</string>", verified.content)
        self.assertEqual(verified.digest, "sha1")
        self.assertEqual(dict(verified.attributes), {})
        self.assertEqual(len(verified.certificates), 4)
        self.assertEqual(
            verified.signer.subject.rfc4514_string(),
            "CN=0B5938EB-A130-466F-BFA5-BFA950500D03",
        )

    def test_openssl_agrees_on_zentral(self) -> None:
        """openssl extracts the same content from the fixture that verify() returns."""
        content = _must(
            "cms", "-verify", "-inform", "DER", "-in", ZENTRAL, "-CAfile", APPLE_ROOT,
            "-purpose", "any", "-no_check_time", "-binary",
        )  # fmt: skip
        self.assertEqual(cms.verify(ZENTRAL.read_bytes()).content, content)

    def test_zentral_chain(self) -> None:
        """The device identity chains to Apple's anchors, ignoring dates, legacy allowed."""
        verified = cms.verify(ZENTRAL.read_bytes())
        root = x509.load_pem_x509_certificate(APPLE_ROOT.read_bytes())
        path = device_trust.verify_chain(
            verified.signer, verified.certificates, [root],
            ignore_validity=True, allow_legacy=True,
        )  # fmt: skip
        self.assertEqual(
            [cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
             for cert in path],
            [
                "0B5938EB-A130-466F-BFA5-BFA950500D03",
                "Apple iPhone Device CA",
                "Apple iPhone Certification Authority",
                "Apple Root CA",
            ],
        )  # fmt: skip
        # The signer's own message need not carry the chain when the anchors do.
        path = device_trust.verify_chain(
            verified.signer,
            (),
            _apple_anchors(),
            ignore_validity=True,
            allow_legacy=True,
        )
        self.assertEqual(path[0], verified.signer)
        self.assertEqual(len(path), 2)

    def test_zentral_chain_expired(self) -> None:
        """Without ignore_validity the expired Apple chain is refused."""
        verified = cms.verify(ZENTRAL.read_bytes())
        self.assertUntrusted(
            "certificate in the chain has expired",
            lambda: device_trust.verify_chain(
                verified.signer,
                verified.certificates,
                _apple_anchors(),
                allow_legacy=True,
            ),
        )

    def test_zentral_chain_legacy(self) -> None:
        """Without allow_legacy the RSA-1024 / SHA-1 Apple chain is refused."""
        verified = cms.verify(ZENTRAL.read_bytes())
        self.assertUntrusted(
            "RSA key too small in the chain",
            lambda: device_trust.verify_chain(
                verified.signer, verified.certificates, _apple_anchors(),
                ignore_validity=True,
            ),
        )  # fmt: skip

    def test_zentral_tampered(self) -> None:
        """One changed byte of the device's signed plist fails verification."""
        der = bytearray(ZENTRAL.read_bytes())
        der[der.index(b"VirtualMac2,1")] ^= 1
        self.assertCMSError("signature does not verify", cms.verify, bytes(der))

    def test_own_chain(self) -> None:
        """A leaf issued by an anchor chains in two steps, and an anchor in one."""
        ca, signer, _ = _pki()
        self.assertEqual(device_trust.verify_chain(signer.cert, [], [ca.cert]), [signer.cert, ca.cert])
        self.assertEqual(device_trust.verify_chain(ca.cert, [], [ca.cert]), [ca.cert])

    def test_unrelated_ca(self) -> None:
        """A signer from an unrelated self-signed CA does not chain."""
        ca, _, _ = _pki()
        rogue_ca = _issue("rogue CA", _key(3), ca=True)
        rogue = _issue("signer", _key(4), rogue_ca)
        self.assertUntrusted(
            "signer does not chain to a trusted anchor",
            lambda: device_trust.verify_chain(rogue.cert, [rogue_ca.cert], [ca.cert]),
        )

    def test_name_is_not_enough(self) -> None:
        """An issuer with the anchor's name but another key does not make a chain."""
        ca, signer, _ = _pki()
        lookalike = _issue("otad test CA", _key(3), ca=True)
        forged = _issue("signer", _key(4), lookalike)
        self.assertEqual(forged.cert.issuer, ca.cert.subject)
        self.assertUntrusted(
            "signer does not chain to a trusted anchor",
            lambda: device_trust.verify_chain(forged.cert, [lookalike.cert], [ca.cert]),
        )
        # The lookalike among the candidates does not hide the genuine issuer.
        self.assertEqual(
            device_trust.verify_chain(signer.cert, [lookalike.cert], [lookalike.cert, ca.cert]),
            [signer.cert, ca.cert],
        )

    def test_intermediate_must_be_ca(self) -> None:
        """An intermediate without basicConstraints cA=true cannot issue."""
        ca, _, _ = _pki()
        not_ca = _issue("not a CA", _key(3), ca)
        leaf = _issue("leaf", _key(4), not_ca)
        self.assertUntrusted(
            "issuer in the chain is not a CA",
            lambda: device_trust.verify_chain(leaf.cert, [not_ca.cert], [ca.cert]),
        )
        intermediate = _issue("intermediate", _key(3), ca, ca=True)
        leaf = _issue("leaf", _key(4), intermediate)
        self.assertEqual(
            device_trust.verify_chain(leaf.cert, [intermediate.cert], [ca.cert]),
            [leaf.cert, intermediate.cert, ca.cert],
        )

    def test_validity(self) -> None:
        """Dates are checked against now, unless ignore_validity."""
        ca, signer, _ = _pki()
        later = datetime.now(UTC) + timedelta(days=365)
        self.assertUntrusted(
            "certificate in the chain has expired",
            lambda: device_trust.verify_chain(signer.cert, [], [ca.cert], now=later),
        )
        self.assertUntrusted(
            "certificate in the chain is not yet valid",
            lambda: device_trust.verify_chain(signer.cert, [], [ca.cert], now=datetime(2000, 1, 1)),
        )
        path = device_trust.verify_chain(signer.cert, [], [ca.cert], now=later, ignore_validity=True)
        self.assertEqual(path, [signer.cert, ca.cert])

    def test_legacy_algorithms(self) -> None:
        """SHA-1 signatures and RSA-1024 keys pass only with allow_legacy."""
        ca, _, _ = _pki()
        sha1 = _issue("sha1 leaf", _key(3), ca, sha1=True)
        self.assertUntrusted(
            "SHA-1 signature in the chain",
            lambda: device_trust.verify_chain(sha1.cert, [], [ca.cert]),
        )
        self.assertEqual(
            device_trust.verify_chain(sha1.cert, [], [ca.cert], allow_legacy=True),
            [sha1.cert, ca.cert],
        )
        small = _issue("small leaf", _key(5, 1024), ca)
        self.assertUntrusted(
            "RSA key too small in the chain",
            lambda: device_trust.verify_chain(small.cert, [], [ca.cert]),
        )
        self.assertEqual(len(device_trust.verify_chain(small.cert, [], [ca.cert], allow_legacy=True)), 2)

    def test_cycle(self) -> None:
        """Two CAs that issued each other, neither trusted, end the search."""
        ca, _, _ = _pki()
        first = _issue("first", _key(3), ca=True)
        second = _issue("second", _key(4), first, ca=True)
        first_again = _issue("first", _key(3), second, ca=True)
        leaf = _issue("leaf", _key(5, 1024), first_again)
        self.assertUntrusted(
            "signer does not chain to a trusted anchor",
            lambda: device_trust.verify_chain(
                leaf.cert, [first_again.cert, second.cert, first.cert], [ca.cert],
                allow_legacy=True,
            ),
        )  # fmt: skip

    def test_only_checks_against_an_anchor_are_remembered(self) -> None:
        """The intermediate-to-anchor signature check is answered from memory for the next device under the same
        intermediate, and a device's own leaf-to-intermediate check is never stored, so messages full of other
        certificates cannot push the useful entries out."""
        ca, _, _ = _pki()
        intermediate = _issue("device CA", _key(3), ca, ca=True)
        leaves = [_issue(f"device {number}", _key(4 + number, 1024), intermediate) for number in range(2)]
        device_trust._signed_by_anchor.cache_clear()
        for leaf in leaves:
            path = device_trust.verify_chain(leaf.cert, [intermediate.cert], [ca.cert], allow_legacy=True)
            self.assertEqual(path, [leaf.cert, intermediate.cert, ca.cert])
        info = device_trust._signed_by_anchor.cache_info()
        self.assertEqual((info.currsize, info.misses, info.hits), (1, 1, 1))

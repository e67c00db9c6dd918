"""Phase 2 at ``POST /profile``, in memory: verified device attributes in, a signed SCEP enrollment profile out."""

from __future__ import annotations

import base64
import datetime
import functools
import plistlib
from pathlib import Path
from typing import Any

from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from otad import tokens
from otad.ca import issue_client_certificate, serial_hex
from otad.device_attributes import MAX_VALUE
from otad.device_trust import load_anchors
from otad.store import Device
from tests.fakeapple import FakeAppleHierarchy, self_signed_identity
from tests.fakedevice import CONTENT_TYPE_ASPEN_CONFIG, FakeDevice, build_pkcs_req, parse_cert_rep, select_scep_certs, sign_cms
from tests.fuzzing import SELF_REFERENCES, malformed_date_plist, nested_plist, self_referencing_plist, sign_as_device
from tests.helpers import MemorySite, growing_table_scans, traced_statements
from tests.test_scep_responder import _key

DATA = Path(__file__).parent / "data"
UDID = "0000FAKE-0011223344556677"


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


def _basic() -> dict[bytes, list[bytes]]:
    return {b"authorization": [b"Basic " + base64.b64encode(b"alice:correct horse")]}


def _content(signed: bytes) -> Any:
    return plistlib.loads(asn1_cms.ContentInfo.load(signed)["content"]["encap_content_info"]["content"].native)


class ProfilePhase2Tests(unittest.TestCase):
    def setUp(self) -> None:
        self.memory = self.site("strict")
        self.device = FakeDevice(None, "https://otad.test", None, apple(), UDID)

    def site(self, policy: str) -> MemorySite:
        memory = MemorySite(Path(self.mktemp()), policy=policy, anchors=(apple().root,))
        self.addCleanup(memory.close)
        return memory

    def post(self, body: bytes, memory: MemorySite | None = None) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        memory = memory or self.memory
        return self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=body)))

    def challenge(self, memory: MemorySite | None = None) -> str:
        memory = memory or self.memory
        code, _, body = self.successResultOf(ensureDeferred(memory.fetch("GET", "/enroll", headers=_basic())))
        self.assertEqual(code, 200)
        return str(_content(body)["PayloadContent"]["Challenge"])

    def test_phase2_answers_scep_payload(self) -> None:
        """A device-signed request with a fresh challenge gets a signed Configuration holding a SCEP payload."""
        code, headers, body = self.post(self.device.phase2_body(self.challenge()))
        self.assertEqual(code, 200, body)
        self.assertEqual(headers[b"content-type"], [b"application/x-apple-aspen-config"])
        profile = _content(body)
        self.assertEqual(profile["PayloadType"], "Configuration")
        scep = profile["PayloadContent"][0]
        self.assertEqual(scep["PayloadType"], "com.apple.security.scep")
        self.assertNotEqual(scep["PayloadUUID"], profile["PayloadUUID"])
        content = scep["PayloadContent"]
        self.assertEqual(content["URL"], "https://otad.test/scep")
        self.assertEqual((content["Keysize"], content["Key Type"], content["Key Usage"]), (2048, "RSA", 5))
        self.assertEqual(content["Subject"], [[["O", self.memory.settings.organization]], [["CN", UDID]]])
        challenge = self.successResultOf(
            self.memory.store.call(
                lambda store: store.consume_challenge(tokens.digest(content["Challenge"]), ("scep",), now=self.memory.clock.seconds())
            )
        )
        self.assertEqual(challenge.bound_to, UDID)
        device = self.successResultOf(self.memory.store.call(lambda store: store.device(UDID)))
        self.assertEqual(device.user, "alice")
        self.assertNotIn("CHALLENGE", device.attributes)

    def test_stable_identifiers(self) -> None:
        """Two enrollments get the same PayloadIdentifiers and different PayloadUUIDs."""
        first = _content(self.post(self.device.phase2_body(self.challenge()))[2])
        second = _content(self.post(self.device.phase2_body(self.challenge()))[2])
        self.assertEqual(first["PayloadIdentifier"], second["PayloadIdentifier"])
        self.assertEqual(first["PayloadContent"][0]["PayloadIdentifier"], second["PayloadContent"][0]["PayloadIdentifier"])
        self.assertNotEqual(first["PayloadUUID"], second["PayloadUUID"])

    def test_challenge_as_data(self) -> None:
        """A CHALLENGE echoed as <data> is accepted like the string."""
        code, _, _ = self.post(self.device.phase2_body(self.challenge().encode()))
        self.assertEqual(code, 200)

    def test_replayed_challenge(self) -> None:
        """A second POST with the same challenge is refused with 403 and the reason."""
        body = self.device.phase2_body(self.challenge())
        self.assertEqual(self.post(body)[0], 200)
        code, _, reason = self.post(body)
        self.assertEqual(code, 403)
        self.assertEqual(reason, b"phase-1 challenge refused: challenge already used\n")

    def test_expired_challenge(self) -> None:
        """A challenge older than challenge_ttl is refused with 403."""
        challenge = self.challenge()
        self.memory.clock.advance(15 * 60 + 1)
        code, _, reason = self.post(self.device.phase2_body(challenge))
        self.assertEqual(code, 403)
        self.assertIn(b"challenge expired", reason)

    def test_unknown_or_missing_challenge(self) -> None:
        """A made-up challenge and a missing one are both 403."""
        self.assertEqual(self.post(self.device.phase2_body("made-up"))[0], 403)
        code, _, reason = self.post(self.device.phase2_body(None))
        self.assertEqual((code, reason), (403, b"the device attributes carry no challenge\n"))

    def test_bad_signature_does_not_consume_challenge(self) -> None:
        """A tampered request is refused, and its challenge still works for the genuine request."""
        challenge = self.challenge()
        genuine = self.device.phase2_body(challenge, ber=False)
        index = genuine.index(challenge.encode())
        tampered = genuine[:index] + bytes([genuine[index] ^ 1]) + genuine[index + 1 :]
        code, _, reason = self.post(tampered)
        self.assertEqual(code, 403)
        self.assertIn(b"signature", reason)
        self.assertEqual(self.post(genuine)[0], 200)

    def test_signer_outside_anchors_strict(self) -> None:
        """Under strict, a request signed by an identity outside the anchors is refused with 403, challenge intact."""
        challenge = self.challenge()
        code, _, reason = self.post(self.device.phase2_body(challenge, signer=self_signed_identity("stranger")))
        self.assertEqual(code, 403)
        self.assertIn(b"not a trusted device identity", reason)
        self.assertEqual(self.post(self.device.phase2_body(challenge))[0], 200)

    def test_signer_outside_anchors_log(self) -> None:
        """Under log, the same request is accepted and a warning event is recorded."""
        memory = self.site("log")
        code, _, _ = self.post(self.device.phase2_body(self.challenge(memory), signer=self_signed_identity("stranger")), memory)
        self.assertEqual(code, 200)
        self.assertTrue(any(event.outcome == "warning" and event.udid == UDID for event in memory.events()))

    def test_malformed_bodies(self) -> None:
        """Empty, truncated, random, padded and bare-BER bodies get 400 with one-line reasons, never 500.

        (The 413 for oversized bodies happens in the HTTP channel; test_web and test_daemon cover it.)
        """
        genuine = self.device.phase2_body(self.challenge(), ber=False)
        cases = {
            b"": 400,
            genuine[: len(genuine) // 2]: 400,
            bytes(range(256)) * 4: 400,
            b"\x30\x80" + b"\x00" * 100: 400,
            genuine + b"\x00" * 10: 400,
        }
        for body, expected in cases.items():
            code, _, reason = self.post(body)
            self.assertEqual(code, expected, reason)
            self.assertEqual(reason.count(b"\n"), 1)

    def test_malformed_date_is_400_and_the_challenge_stays_usable(self) -> None:
        """A device-signed plist holding <date>garbage</date> (plistlib raises AttributeError for it, which otad once let
        through as a 500: issue 10) is a 400 with one line; no device is recorded and the challenge still works."""
        challenge = self.challenge()
        content = malformed_date_plist(self.device.device_attributes(challenge), "SIGNED_AT", "garbage")
        assert self.device.identity is not None
        code, _, reason = self.post(sign_as_device(content, self.device.identity, apple().chain(), ber=True))
        self.assertEqual((code, reason), (400, b"the signed content is not a property list\n"))
        self.assertIsNone(self.successResultOf(self.memory.store.call(lambda store: store.device(UDID))))
        self.assertEqual(self.post(self.device.phase2_body(challenge))[0], 200)

    def test_content_not_a_plist(self) -> None:
        """A valid device signature over something that is not a plist is 400."""
        cert, key = self.device.identity
        body = sign_cms(b"not a plist at all", cert, key, digest="sha256", signed_attributes=None, certificates=[cert, *apple().chain()])
        code, _, reason = self.post(body)
        self.assertEqual((code, reason), (400, b"the signed content is not a property list\n"))

    def test_subject_that_cannot_be_built(self) -> None:
        """A scep_subject needing an attribute the device left empty is a 400, and the challenge stays usable."""
        memory = MemorySite(Path(self.mktemp()), anchors=(apple().root,), scep_subject="O=Test/CN=$SERIAL")
        self.addCleanup(memory.close)
        challenge = self.challenge(memory)
        blank = FakeDevice(None, "https://otad.test", None, apple(), UDID, attributes={"SERIAL": ""}, identity=self.device.identity)
        code, _, reason = self.post(blank.phase2_body(challenge), memory)
        self.assertEqual(code, 400)
        self.assertIn(b"cannot build the SCEP subject", reason)
        self.assertIsNone(self.successResultOf(memory.store.call(lambda store: store.device(UDID))))
        code, _, body = self.post(self.device.phase2_body(challenge), memory)
        self.assertEqual(code, 200)
        subject = _content(body)["PayloadContent"][0]["PayloadContent"]["Subject"]
        self.assertEqual(subject[1][0][1], self.device.device_attributes(None)["SERIAL"])

    def test_refusals_are_logged_and_change_nothing_else(self) -> None:
        """Each of four refusals (unknown challenge, no challenge, a signature that does not verify, not CMS at all)
        adds exactly one 'refused' event with its reason, and no device, certificate, delivery or challenge row."""
        challenge = self.challenge()

        def rows() -> dict[str, int]:
            def count(store: Any) -> dict[str, int]:
                tables = ("devices", "certificates", "deliveries", "challenges")
                return {table: store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables}

            return self.successResultOf(self.memory.store.call(count))

        before = rows()
        tampered = bytearray(self.device.phase2_body(challenge, ber=False))
        tampered[tampered.index(b"<plist") + 10] ^= 0x01
        for body, reason in (
            (self.device.phase2_body("made-up"), "unknown challenge"),
            (self.device.phase2_body(None), "carry no challenge"),
            (bytes(tampered), "signature"),
            (b"\x30\x03abc", "not a CMS signed request"),
        ):
            self.post(body)
            latest = self.memory.events()[0]
            self.assertEqual(latest.outcome, "refused")
            self.assertIn(reason, latest.reason)
            self.assertEqual(rows(), before, reason)
        self.assertEqual([event.outcome for event in self.memory.events()[:4]], ["refused"] * 4)

    def test_otad_signed_but_not_issued_identity(self) -> None:
        """A phase-3 request signed by a certificate of otad's CA that the store never issued to a device is 403."""
        signer = self.memory.authority.tls
        body = sign_cms(
            plistlib.dumps({"UDID": UDID}), signer.cert, signer.key, digest="sha256", signed_attributes=(), certificates=[signer.cert]
        )
        code, _, reason = self.post(body)
        self.assertEqual((code, reason), (403, b"the signing certificate is not one otad issued\n"))


class RealCaptureTests(unittest.TestCase):
    def test_zentral_capture_passes_strict_apple_chain(self) -> None:
        """The real macOS 13 capture passes signature and strict Apple-chain checks; only its old challenge is refused."""
        memory = MemorySite(Path(self.mktemp()), policy="strict", anchors=load_anchors(None))
        self.addCleanup(memory.close)
        capture = (DATA / "zentral" / "ota-phase2-macos13.der").read_bytes()
        code, _, reason = self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=capture)))
        self.assertEqual(code, 403)
        self.assertEqual(reason, b"phase-1 challenge refused: unknown challenge\n")

    def test_zentral_capture_with_one_byte_changed(self) -> None:
        """The same capture with one byte of its signed content changed is refused for its signature."""
        memory = MemorySite(Path(self.mktemp()), policy="strict", anchors=load_anchors(None))
        self.addCleanup(memory.close)
        capture = bytearray((DATA / "zentral" / "ota-phase2-macos13.der").read_bytes())
        capture[capture.index(b"<key>UDID</key>") + 6] ^= 0x20
        code, _, reason = self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=bytes(capture))))
        self.assertEqual(code, 403)
        self.assertIn(b"signature", reason)


class Phase3InMemoryTests(unittest.TestCase):
    def test_invalid_rendered_profile_is_not_served(self) -> None:
        """A template that renders into an invalid payload gets a 500 and an error event; nothing is delivered."""
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        (folder / "broken.plist").write_bytes(
            plistlib.dumps(
                {
                    "PayloadContent": [
                        {
                            "PayloadType": "com.apple.webClip.managed",
                            "PayloadVersion": 1,
                            # Renders empty when the device sent no SERIAL: a missing identifier.
                            "PayloadIdentifier": "$SERIAL",
                            "Label": "x",
                            "URL": "https://intranet.example.com",
                        }
                    ]
                }
            )
        )
        memory = MemorySite(Path(self.mktemp()), templates=folder)
        self.addCleanup(memory.close)
        key = memory.authority.ra.key
        now = memory.clock.seconds()
        cert = issue_client_certificate(
            memory.authority.root,
            key.public_key(),
            x509.Name([]),
            x509.Extensions([]),
            udid=UDID,
            serial=12345,
            now=datetime.datetime.fromtimestamp(now, datetime.UTC),
            lifetime=datetime.timedelta(days=1),
        )
        memory.store.call(
            lambda store: store.add_certificate(
                serial=serial_hex(cert.serial_number),
                udid=UDID,
                subject="",
                not_before=now - 60,
                not_after=now + 3600,
                der=cert.public_bytes(serialization.Encoding.DER),
                csr=None,
                challenge_id=None,
                transaction_id=None,
                now=now,
            )
        )
        body = sign_cms(plistlib.dumps({"UDID": UDID}), cert, key, digest="sha256", signed_attributes=(), certificates=[cert])
        code, _, reason = self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=body)))
        self.assertEqual(code, 500)
        self.assertIn(b"invalid profile", reason)
        self.assertEqual(memory.events()[0].outcome, "error")
        self.assertEqual(self.successResultOf(memory.store.call(lambda store: store.delivery_count(serial_hex(12345)))), 0)


def scep_site(test: unittest.TestCase) -> MemorySite:
    """The site in memory, with the clock at real time: the shared test CA was bootstrapped now, and a SCEP certificate
    must fall inside its validity."""
    memory = MemorySite(Path(test.mktemp()), anchors=(apple().root,))
    test.addCleanup(memory.close)
    memory.clock.advance(datetime.datetime.now(datetime.UTC).timestamp() - memory.clock.seconds())
    return memory


def enroll_by_scep(test: unittest.TestCase, memory: MemorySite, device: FakeDevice) -> tuple[x509.Certificate, Any]:
    """Phase 1, phase 2 and SCEP in memory, as ``device``; the identity otad issued (certificate and key).

    SCEP uses the fake device's own message code: its HTTP client sends bodies through the reactor, not in memory."""

    def fetch(method: str, url: str, **kwargs: Any) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        return test.successResultOf(ensureDeferred(memory.fetch(method, url, **kwargs)))

    code, _, body = fetch("GET", "/enroll", headers=_basic())
    test.assertEqual(code, 200)
    code, _, body = fetch("POST", "/profile", data=device.phase2_body(str(_content(body)["PayloadContent"]["Challenge"])))
    test.assertEqual(code, 200)
    scep = _content(body)["PayloadContent"][0]["PayloadContent"]
    _, headers, body = fetch("GET", "/scep?operation=GetCACert")
    recipient, ca_certs = select_scep_certs(headers[b"content-type"][0], body)
    key = _key(0)
    signer, _ = self_signed_identity("SCEP SIGNER", key=key)
    request = build_pkcs_req(key, signer, recipient, subject=scep["Subject"], challenge=scep["Challenge"], key_usage=scep["Key Usage"])
    code, _, body = fetch(
        "POST", "/scep?operation=PKIOperation", data=request.der, headers={b"content-type": [b"application/x-pki-message"]}
    )
    test.assertEqual(code, 200)
    return parse_cert_rep(body, ca_certs=ca_certs, request=request, key=key), key


class FlowQueryPlanTests(unittest.TestCase):
    def test_no_statement_reads_a_growing_table_whole(self) -> None:
        """A failed login, then phase 1, phase 2 (PKCS#12) and phase 3 twice find their rows by index, in SQLite's own query
        plans: a full scan of a table that grows with every enrollment would make each one cost more than the last."""
        memory = MemorySite(Path(self.mktemp()), anchors=(apple().root,), identity="pkcs12")
        self.addCleanup(memory.close)
        device = FakeDevice(None, "https://otad.test", None, apple(), UDID)

        def fetch(method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
            code, _, body = self.successResultOf(ensureDeferred(memory.fetch(method, path, **kwargs)))
            return code, body

        with traced_statements(memory.store) as statements:
            wrong = {b"authorization": [b"Basic " + base64.b64encode(b"alice:wrong")]}
            self.assertEqual(fetch("GET", "/enroll", headers=wrong)[0], 401)
            code, body = fetch("GET", "/enroll", headers=_basic())
            self.assertEqual(code, 200)
            code, body = fetch("POST", "/profile", data=device.phase2_body(str(_content(body)["PayloadContent"]["Challenge"])))
            self.assertEqual(code, 200)
            device.install_pkcs12(_content(body)["PayloadContent"][0])
            for _ in range(2):
                self.assertEqual(fetch("POST", "/profile", data=device.phase3_body())[0], 200)
        self.assertTrue(any("deliveries" in sql for sql in statements), statements)
        self.assertEqual(growing_table_scans(memory.store, statements), {})

    def test_scep_enrollment_reads_no_growing_table_whole(self) -> None:
        """The same for the default path: phase 1, phase 2, a SCEP PKCSReq and phase 3 twice."""
        memory = scep_site(self)
        device = FakeDevice(None, "https://otad.test", None, apple(), UDID)
        with traced_statements(memory.store) as statements:
            identity = enroll_by_scep(self, memory, device)
            for _ in range(2):
                body = sign_as_device(plistlib.dumps(device.device_attributes(None)), identity)
                code, _, _ = self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=body)))
                self.assertEqual(code, 200)
        self.assertTrue(any("certificates WHERE transaction_id" in sql for sql in statements), statements)
        self.assertEqual(growing_table_scans(memory.store, statements), {})


class Phase3DeviceAttributesTests(unittest.TestCase):
    """Phase 3 after a whole enrollment in memory (the fake device's messages through the production site: /enroll,
    phase 2, SCEP), with device attributes that once made the store's json.dumps raise (issue 10)."""

    def setUp(self) -> None:
        self.memory = scep_site(self)
        self.device = FakeDevice(None, "https://otad.test", None, apple(), UDID)
        self.identity = enroll_by_scep(self, self.memory, self.device)

    def fetch(self, method: str, url: str, **kwargs: Any) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        return self.successResultOf(ensureDeferred(self.memory.fetch(method, url, **kwargs)))

    def phase3(self, content: bytes) -> tuple[int, list[bytes]]:
        """Phase 3 with ``content`` as the device attributes, signed by the identity otad issued: status and content type."""
        body = sign_as_device(content, self.identity)
        # Within the body cap: the request reaches the plist parser rather than the 413.
        self.assertLessEqual(len(body), self.memory.settings.max_body)
        code, headers, _ = self.fetch("POST", "/profile", data=body)
        return code, headers[b"content-type"]

    def stored(self) -> Device:
        device = self.successResultOf(self.memory.store.call(lambda store: store.device(UDID)))
        assert device is not None
        return device

    def assertStoredBoundedScalars(self) -> None:
        """The stored record holds short scalars only, and PRODUCT is still what phase 2 recorded."""
        attributes = self.stored().attributes
        for name, value in attributes.items():
            self.assertIsInstance(value, (str, bool, int), name)
            self.assertLessEqual(len(str(value)), MAX_VALUE, name)
        self.assertEqual(attributes["PRODUCT"], self.device.device_attributes(None)["PRODUCT"])

    def test_deeply_nested_attribute_is_dropped(self) -> None:
        """PRODUCT as an array nested 3,900 levels deep (an XML plist within the 64 KiB cap) once gave RecursionError,
        a 500. otad keeps only short scalar attributes, so it drops that value: the configuration is sent and the
        stored record keeps the PRODUCT of phase 2."""
        content = nested_plist(self.device.device_attributes(None), "PRODUCT", "XML array", 3900)
        self.assertEqual(self.phase3(content), (200, [CONTENT_TYPE_ASPEN_CONFIG]))
        self.assertEqual(self.memory.events()[0].outcome, "configuration sent")
        self.assertStoredBoundedScalars()

    def test_self_referencing_attribute_is_dropped(self) -> None:
        """PRODUCT as each cycle a binary plist can hold (an array or a dict that contains itself, two arrays that
        contain each other, the top dict itself) once gave "Circular reference detected", a 500. Each is dropped the
        same way: the configuration is sent and the stored record keeps the PRODUCT of phase 2."""
        for variant in SELF_REFERENCES:
            content = self_referencing_plist(self.device.device_attributes(None), "PRODUCT", variant)
            self.assertEqual(self.phase3(content), (200, [CONTENT_TYPE_ASPEN_CONFIG]), variant)
            self.assertEqual(self.memory.events()[0].outcome, "configuration sent", variant)
            self.assertStoredBoundedScalars()

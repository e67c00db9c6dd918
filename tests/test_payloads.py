"""Tests for otad.payloads: the builders, the validator, serialization and lint."""

from __future__ import annotations

import plistlib
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from twisted.trial.unittest import TestCase

from otad.payloads import (
    Finding,
    ProfileInvalid,
    configuration_profile,
    lint,
    new_uuid,
    parse_subject,
    pkcs12_payload,
    profile_service_payload,
    scep_payload,
    serialize,
    serialize_payloads,
    validate,
    validate_payloads,
)
from tests.helpers import webclip

# The developer's first phase-2 answer from seed 000, byte for byte: no top-level
# PayloadUUID or PayloadIdentifier, PayloadContent given twice, and the PKCS#12 as <string>.
SEED_BROKEN = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple Inc//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
<key>PayloadVersion</key>
<integer>1</integer>
<key>PayloadType</key>
<string>Configuration</string>
<key>PayloadContent</key>
<array>
<dict>
<key>PayloadContent</key>
<dict>
<key>Challenge</key>
<string>MyChallengeGoesHere</string>
</dict>
<key>PayloadDescription</key>
<string>Provides device encryption identity</string>
<key>PayloadUUID</key>
<string>fd8a6b9e-0fed-406f-9571-8ec98722b713</string>
<key>PayloadType</key>
<string>com.apple.security.pkcs12</string>
<key>PayloadDisplayName</key>
<string>Cert Test</string>
<key>PayloadVersion</key>
<integer>1</integer>
<key>PayloadOrganization</key>
<string>Example, Inc.</string>
<key>PayloadIdentifier</key>
<string>com.example.profileservice.webclip</string>
<key>PayloadContent</key>
<string>__MY_BASE64_ENCODED_PKCS12_CERT__</string>
<key>Password</key>
<string>__MY_CERT_PASSWORD__</string>
</dict>
</array>
</dict>
</plist>
"""

# The developer's working profile from seed 000. Its <data> placeholder is not base64, so it
# is replaced by real base64 (the DER SEQUENCE header a PKCS#12 starts with).
SEED_FIXED = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple Inc//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
<key>PayloadVersion</key>
<integer>1</integer>
<key>PayloadType</key>
<string>Configuration</string>
<key>PayloadUUID</key>
<string>9f93912b-5fd2-4455-99fd-13b9a47b4581</string>
<key>PayloadIdentifier</key>
<string>org.example.mymdm</string>
<key>PayloadContent</key>
<array>
<dict>
<key>PayloadType</key>
<string>com.apple.security.pkcs12</string>
<key>PayloadUUID</key>
<string>f78c5002-3907-4f67-b631-d41c44283628</string>
<key>PayloadVersion</key>
<integer>1</integer>
<key>PayloadIdentifier</key>
<string>com.mymdm.cert</string>
<key>Password</key>
<string>__MY_CERT_PASSWORD__</string>
<key>PayloadContent</key>
<data>MIIKAQIBAzCCCcc=</data>
</dict>
</array>
</dict>
</plist>
"""


def _scep(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "url": "https://otad.example.com:8443/scep",
        "subject": [[["O", "ACME Inc."]], [["CN", "Client Authentication"]]],
        "challenge": "one-time",
        "keysize": 2048,
        "identifier": "com.example.otad.client-auth",
        "display_name": "Client Authentication",
        "organization": "ACME Inc.",
    }
    arguments.update(overrides)
    return scep_payload(**arguments)


def _pkcs12() -> dict[str, Any]:
    return pkcs12_payload(
        p12=b"\x30\x82\x0a\x01 not really a PKCS#12",
        password="secret",
        identifier="com.example.otad.identity",
        display_name="Device identity",
        organization="ACME Inc.",
    )


def _webclip() -> dict[str, Any]:
    return webclip(url="https://intranet.example.com/", label="ACME Inc.", identifier="com.example.otad.webclip", organization="ACME Inc.")


def _configuration(content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": "com.example.otad.test",
        "PayloadUUID": new_uuid(),
        "PayloadContent": content,
    }


def _errors(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.path, f.message) for f in findings if f.level == "error"]


class PayloadsTests(TestCase):
    """The builders produce profiles that validate and serialize as Apple expects."""

    def test_new_uuid(self) -> None:
        """new_uuid returns distinct uppercase canonical UUIDs."""
        first, second = new_uuid(), new_uuid()
        self.assertNotEqual(first, second)
        self.assertRegex(
            first,
            r"^[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}$",
        )

    def test_profile_service(self) -> None:
        """The phase-1 payload has Apple's type, version and content keys, and validates."""
        profile = profile_service_payload(
            url="https://otad.example.com:8443/profile",
            device_attributes=["UDID", "VERSION", "PRODUCT"],
            challenge="token",
            identifier="com.example.otad.profile-service",
            organization="ACME Inc.",
            display_name="ACME Profile Service",
            description="Enroll this device",
        )
        self.assertEqual(profile["PayloadType"], "Profile Service")
        self.assertEqual(profile["PayloadVersion"], 1)
        self.assertEqual(
            profile["PayloadContent"],
            {
                "URL": "https://otad.example.com:8443/profile",
                "DeviceAttributes": ["UDID", "VERSION", "PRODUCT"],
                "Challenge": "token",
            },
        )
        self.assertEqual(validate(profile), [])
        self.assertEqual(plistlib.loads(serialize(profile)), profile)

    def test_scep_content_keys(self) -> None:
        """The SCEP payload carries exactly Apple's content keys, spelled as Apple spells them."""
        payload = _scep(name="otad")
        self.assertEqual(payload["PayloadType"], "com.apple.security.scep")
        content = payload["PayloadContent"]
        self.assertEqual(
            set(content),
            {"URL", "Subject", "Challenge", "Keysize", "Key Type", "Key Usage", "Name"},
        )
        self.assertEqual(content["Key Type"], "RSA")
        self.assertEqual(content["Key Usage"], 5)
        self.assertEqual(
            content["Subject"],
            [[["O", "ACME Inc."]], [["CN", "Client Authentication"]]],
        )
        self.assertNotIn("Name", _scep()["PayloadContent"])

    def test_scep_refuses_bad_keysize(self) -> None:
        """Asking the builder for a key size devices do not support raises ProfileInvalid."""
        error = self.assertRaises(ProfileInvalid, _scep, keysize=3000)
        self.assertEqual(
            str(error),
            "error: PayloadContent.Keysize: must be one of 1024, 2048, 4096, not 3000",
        )

    def test_pkcs12_is_data(self) -> None:
        """PKCS#12 bytes are written as <data>, with the password as <string>."""
        profile = configuration_profile(
            identifier="com.example.otad.enroll",
            organization="ACME Inc.",
            display_name="Enroll",
            description="Device identity",
            content=[_pkcs12()],
        )
        xml = serialize(profile).decode()
        self.assertRegex(xml, r"<key>PayloadContent</key>\s*<data>")
        self.assertRegex(xml, r"<key>Password</key>\s*<string>secret</string>")
        parsed = plistlib.loads(xml.encode())
        self.assertEqual(
            parsed["PayloadContent"][0]["PayloadContent"],
            b"\x30\x82\x0a\x01 not really a PKCS#12",
        )

    def test_configuration_validates(self) -> None:
        """A Configuration of a web clip and a SCEP payload validates and has distinct UUIDs."""
        profile = configuration_profile(
            identifier="com.example.otad.config",
            organization="ACME Inc.",
            display_name="ACME",
            description="Intranet access",
            content=[_webclip(), _scep()],
            removal_disallowed=True,
        )
        self.assertEqual(validate(profile), [])
        uuids = {profile["PayloadUUID"]} | {p["PayloadUUID"] for p in profile["PayloadContent"]}
        self.assertEqual(len(uuids), 3)
        self.assertIs(profile["PayloadRemovalDisallowed"], True)

    def test_webclip(self) -> None:
        """A web clip with Apple's managed type, URL, Label and IsRemovable passes the validator."""
        self.assertEqual(validate_payloads([_webclip()]), [])

    def test_encrypted_configuration(self) -> None:
        """Encrypted content becomes EncryptedPayloadContent <data> and PayloadContent is absent."""
        profile = configuration_profile(
            identifier="com.example.otad.config",
            organization="ACME Inc.",
            display_name="ACME",
            description="Encrypted",
            encrypted_content=b"\x30\x80cms",
        )
        self.assertNotIn("PayloadContent", profile)
        self.assertRegex(serialize(profile).decode(), r"<key>EncryptedPayloadContent</key>\s*<data>")

    def test_configuration_needs_exactly_one_content(self) -> None:
        """configuration_profile refuses both or neither of content and encrypted_content."""
        common = {
            "identifier": "com.example.otad.config",
            "organization": "ACME Inc.",
            "display_name": "ACME",
            "description": "x",
        }
        self.assertRaises(ValueError, configuration_profile, **common)
        self.assertRaises(
            ValueError,
            configuration_profile,
            content=[],
            encrypted_content=b"x",
            **common,
        )

    def test_expiration_date_in_utc(self) -> None:
        """An aware expiration date is stored as the same instant in naive UTC."""
        moment = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        profile = configuration_profile(
            identifier="com.example.otad.config",
            organization="ACME Inc.",
            display_name="ACME",
            description="x",
            content=[],
            expiration_date=moment,
        )
        self.assertEqual(profile["PayloadExpirationDate"], datetime(2030, 1, 1, 10, 0))
        self.assertIn(b"<date>2030-01-01T10:00:00Z</date>", serialize(profile))

    def test_serialize_payloads(self) -> None:
        """serialize_payloads writes the bare payload array that gets encrypted in phase 3."""
        payloads = [_webclip(), _scep()]
        self.assertEqual(plistlib.loads(serialize_payloads(payloads)), payloads)

    def test_serialize_payloads_refuses_invalid(self) -> None:
        """serialize_payloads refuses a payload missing its PayloadIdentifier, naming the index."""
        payload = _webclip()
        del payload["PayloadIdentifier"]
        error = self.assertRaises(ProfileInvalid, serialize_payloads, [_scep(), payload])
        self.assertEqual(str(error), "error: [1].PayloadIdentifier: missing required key")

    def test_serialize_refuses_errors(self) -> None:
        """serialize raises ProfileInvalid whose message is the first error and keeps all findings."""
        profile = _configuration([_webclip()])
        del profile["PayloadUUID"]
        profile["PayloadContent"][0]["PayloadVersion"] = "1"
        error = self.assertRaises(ProfileInvalid, serialize, profile)
        self.assertIsInstance(error, ValueError)
        self.assertEqual(str(error), "error: PayloadUUID: missing required key")
        self.assertIn(
            ("PayloadContent[0].PayloadVersion", "must be <integer>, not <string>"),
            _errors(error.findings),
        )

    def test_serialize_sorts_keys(self) -> None:
        """serialize writes XML with sorted keys, so equal profiles give equal bytes."""
        xml = serialize(_configuration([]))
        keys = re.findall(rb"<key>([^<]*)</key>", xml)
        self.assertTrue(xml.startswith(b"<?xml"))
        self.assertEqual(keys, sorted(keys))

    def test_parse_subject(self) -> None:
        """Slash-separated subjects, with or without a leading slash, become Apple's arrays."""
        expected = [[["O", "ACME Inc."]], [["CN", "$UDID"]]]
        self.assertEqual(parse_subject("O=ACME Inc./CN=$UDID"), expected)
        self.assertEqual(parse_subject("/O=ACME Inc./CN=$UDID"), expected)

    def test_parse_subject_escapes(self) -> None:
        """\\/ is a literal slash, + joins a multi-valued component, and OIDs are accepted."""
        self.assertEqual(
            parse_subject(r"O=A\/B/CN=x+0.9.2342.19200300.100.1.25=example"),
            [[["O", "A/B"]], [["CN", "x"], ["0.9.2342.19200300.100.1.25", "example"]]],
        )

    def test_parse_subject_refusals(self) -> None:
        """Empty subjects, empty parts, missing '=', unknown attributes and bad escapes are refused."""
        cases = {
            "": "empty subject",
            "O=a//CN=b": "empty component",
            "O=a/CN": "is not ATTRIBUTE=value",
            "Organisation=a": "unknown subject attribute 'Organisation'",
            "CN=": "empty value for CN",
            r"CN=a\n": "unknown escape",
            "CN=a\\": "lone backslash",
        }
        for template, problem in cases.items():
            error = self.assertRaises(ValueError, parse_subject, template)
            self.assertIn(problem, str(error))


class ValidatorTests(TestCase):
    """validate and lint flag the mistakes that stop a device installing a profile."""

    def test_string_pkcs12(self) -> None:
        """A PKCS#12 given as <string> is an error at its path telling the author to use <data>."""
        payload = _pkcs12()
        payload["PayloadContent"] = "MIIKAQIBAzCCCcc="
        self.assertEqual(
            _errors(validate(_configuration([payload]))),
            [("PayloadContent[0].PayloadContent", "must be <data>, not <string>")],
        )

    def test_missing_uuid_and_identifier(self) -> None:
        """Missing PayloadUUID and PayloadIdentifier are errors at the top level and in payloads."""
        profile = _configuration([_webclip()])
        del profile["PayloadUUID"]
        del profile["PayloadContent"][0]["PayloadIdentifier"]
        self.assertEqual(
            _errors(validate(profile)),
            [
                ("PayloadUUID", "missing required key"),
                ("PayloadContent[0].PayloadIdentifier", "missing required key"),
            ],
        )

    def test_finding_str(self) -> None:
        """A finding reads as 'level: path: message'."""
        finding = Finding("error", "PayloadContent[0].PayloadUUID", "missing required key")
        self.assertEqual(str(finding), "error: PayloadContent[0].PayloadUUID: missing required key")

    def test_scep_key_spellings(self) -> None:
        """KeyType, KeyUsage and KeySize are errors that name Apple's spelling."""
        payload = _scep()
        content = payload["PayloadContent"]
        content["KeyType"] = content.pop("Key Type")
        content["key_usage"] = content.pop("Key Usage")
        content["KeySize"] = content.pop("Keysize")
        self.assertEqual(
            _errors(validate(_configuration([payload]))),
            [
                (
                    "PayloadContent[0].PayloadContent.KeyType",
                    "misspelled key: the key is 'Key Type'",
                ),
                (
                    "PayloadContent[0].PayloadContent.key_usage",
                    "misspelled key: the key is 'Key Usage'",
                ),
                (
                    "PayloadContent[0].PayloadContent.KeySize",
                    "misspelled key: the key is 'Keysize'",
                ),
            ],
        )

    def test_scep_values(self) -> None:
        """Keysize 3000, a non-RSA key type, key usage 2 and a flat Subject are errors."""
        payload = _scep()
        content = payload["PayloadContent"]
        content.update(
            {
                "Keysize": 3000,
                "Key Type": "EC",
                "Key Usage": 2,
                "Subject": [["CN", "x"]],
            }
        )
        self.assertEqual(
            _errors(validate(_configuration([payload]))),
            [
                (
                    "PayloadContent[0].PayloadContent.Keysize",
                    "must be one of 1024, 2048, 4096, not 3000",
                ),
                (
                    "PayloadContent[0].PayloadContent.Key Type",
                    "must be 'RSA', not 'EC'",
                ),
                (
                    "PayloadContent[0].PayloadContent.Key Usage",
                    "must be one of 0, 1, 4, 5, not 2",
                ),
                (
                    "PayloadContent[0].PayloadContent.Subject[0][0]",
                    "must be an <array> of two <string>s: attribute, value",
                ),
                (
                    "PayloadContent[0].PayloadContent.Subject[0][1]",
                    "must be an <array> of two <string>s: attribute, value",
                ),
            ],
        )

    def test_scep_needs_url(self) -> None:
        """A SCEP payload without a URL is an error."""
        payload = _scep()
        del payload["PayloadContent"]["URL"]
        self.assertEqual(
            _errors(validate(_configuration([payload]))),
            [("PayloadContent[0].PayloadContent.URL", "missing required key")],
        )

    def test_duplicate_uuids(self) -> None:
        """Two payloads sharing a PayloadUUID (in any letter case) are an error at the second."""
        first, second = _webclip(), _scep()
        second["PayloadUUID"] = first["PayloadUUID"].lower()
        self.assertEqual(
            _errors(validate(_configuration([first, second]))),
            [
                (
                    "PayloadContent[1].PayloadUUID",
                    "duplicate PayloadUUID (also at PayloadContent[0].PayloadUUID)",
                )
            ],
        )

    def test_version_as_string(self) -> None:
        """PayloadVersion written as <string> is an error."""
        profile = _configuration([])
        profile["PayloadVersion"] = "1"
        self.assertEqual(
            _errors(validate(profile)),
            [("PayloadVersion", "must be <integer>, not <string>")],
        )

    def test_version_as_bool(self) -> None:
        """PayloadVersion written as <true/> is an error although Python's True == 1."""
        profile = _configuration([_webclip()])
        profile["PayloadContent"][0]["PayloadVersion"] = True
        self.assertEqual(
            _errors(validate(profile)),
            [("PayloadContent[0].PayloadVersion", "must be <integer>, not <true/>")],
        )

    def test_top_level_not_dict(self) -> None:
        """A top level that is not a dictionary is one error at the empty path."""
        self.assertEqual(
            _errors(validate([_webclip()])),
            [("", "top level must be <dict>, not <array>")],
        )

    def test_top_level_type(self) -> None:
        """A bare payload is not a profile: the top level must be Configuration or Profile Service."""
        self.assertEqual(
            _errors(validate(_webclip())),
            [
                (
                    "PayloadType",
                    ("top-level PayloadType must be Configuration or Profile Service, not 'com.apple.webClip.managed'"),
                )
            ],
        )

    def test_unknown_key_warns(self) -> None:
        """An unknown key in a known payload type is a warning, not an error."""
        payload = _webclip()
        payload["Colour"] = "red"
        findings = validate(_configuration([payload]))
        self.assertEqual(
            findings,
            [
                Finding(
                    "warning",
                    "PayloadContent[0].Colour",
                    "unknown key for com.apple.webClip.managed payloads",
                )
            ],
        )
        self.assertEqual(
            plistlib.loads(serialize(_configuration([payload])))["PayloadContent"][0]["Colour"],
            "red",
        )

    def test_unknown_payload_type_keys_unchecked(self) -> None:
        """Keys of payload types otad has no table for are not reported."""
        payload = {
            "PayloadType": "com.apple.wifi.managed",
            "PayloadVersion": 1,
            "PayloadIdentifier": "com.example.wifi",
            "PayloadUUID": new_uuid(),
            "SSID_STR": "ACME",
            "AutoJoin": True,
        }
        self.assertEqual(validate(_configuration([payload])), [])

    def test_uuid_form_warns(self) -> None:
        """A PayloadUUID that is not in UUID form is only a warning (Apple's sample uses 'Ignored')."""
        profile = _configuration([])
        profile["PayloadUUID"] = "Ignored"
        findings = validate(profile)
        self.assertEqual(_errors(findings), [])
        self.assertEqual([f.path for f in findings], ["PayloadUUID"])

    def test_configuration_content_rules(self) -> None:
        """A Configuration needs PayloadContent or EncryptedPayloadContent, not both, and <data>."""
        both = _configuration([])
        both["EncryptedPayloadContent"] = b"x"
        neither = _configuration([])
        del neither["PayloadContent"]
        string = _configuration([])
        del string["PayloadContent"]
        string["EncryptedPayloadContent"] = "MIAGCSqGSIb3DQEHA6CAMIACAQA="
        self.assertEqual(
            _errors(validate(both)),
            [("EncryptedPayloadContent", "not allowed together with PayloadContent")],
        )
        self.assertEqual(
            _errors(validate(neither)),
            [
                (
                    "PayloadContent",
                    "missing: a Configuration needs PayloadContent or EncryptedPayloadContent",
                )
            ],
        )
        self.assertEqual(
            _errors(validate(string)),
            [("EncryptedPayloadContent", "must be <data>, not <string>")],
        )

    def test_nested_configuration(self) -> None:
        """A Configuration cannot sit inside another Configuration's PayloadContent."""
        self.assertEqual(
            _errors(validate(_configuration([_configuration([])]))),
            [
                (
                    "PayloadContent[0].PayloadType",
                    "a Configuration payload cannot be nested",
                )
            ],
        )

    def test_profile_service_rules(self) -> None:
        """A Profile Service needs an http(s) URL and an array of attribute names."""
        profile = profile_service_payload(
            url="https://otad.example.com/profile",
            device_attributes=["UDID"],
            challenge="c",
            identifier="com.example.otad.profile-service",
            organization="ACME",
            display_name="ACME",
            description="x",
        )
        profile["PayloadContent"]["URL"] = "ftp://otad.example.com/profile"
        profile["PayloadContent"]["DeviceAttributes"] = ["UDID", 7]
        profile["PayloadContent"]["Challenge"] = 5
        self.assertEqual(
            _errors(validate(profile)),
            [
                ("PayloadContent.URL", "must be an https:// URL"),
                (
                    "PayloadContent.DeviceAttributes[1]",
                    "must be <string>, not <integer>",
                ),
                (
                    "PayloadContent.Challenge",
                    "must be <string> or <data>, not <integer>",
                ),
            ],
        )

    def test_profile_keys_typed(self) -> None:
        """Optional profile keys are type-checked: removal flag bool, expiration date a date."""
        profile = _configuration([])
        profile["PayloadRemovalDisallowed"] = "true"
        profile["PayloadExpirationDate"] = "2030-01-01"
        profile["DurationUntilRemoval"] = 3600.5
        self.assertEqual(
            _errors(validate(profile)),
            [
                (
                    "PayloadRemovalDisallowed",
                    "must be <true/> or <false/>, not <string>",
                ),
                ("PayloadExpirationDate", "must be <date>, not <string>"),
            ],
        )

    def test_non_plist_values(self) -> None:
        """Values plistlib cannot write (None, control characters) are errors, not crashes."""
        profile = _configuration([_webclip()])
        profile["PayloadDescription"] = None
        profile["PayloadContent"][0]["Label"] = "bell\x07"
        self.assertEqual(
            _errors(validate(profile)),
            [
                (
                    "PayloadContent[0].Label",
                    "control characters cannot appear in <string>; use <data>",
                ),
                ("PayloadDescription", "NoneType is not a property-list value"),
            ],
        )

    def test_validate_payloads_prefix(self) -> None:
        """validate_payloads reports paths under the given prefix."""
        payload = _webclip()
        del payload["URL"]
        self.assertEqual(
            _errors(validate_payloads([payload], "PayloadContent")),
            [("PayloadContent[0].URL", "missing required key")],
        )

    def test_lint_garbage(self) -> None:
        """Bytes that are not a property list give exactly one error at the empty path."""
        for garbage in (
            b"\x30\x82\x01\x00garbage",
            b"bplist00\xff\xff",
            b"<plist><dict>",
        ):
            findings = lint(garbage)
            self.assertEqual(len(findings), 1)
            self.assertEqual(findings[0].level, "error")
            self.assertEqual(findings[0].path, "")

    def test_lint_binary(self) -> None:
        """lint reads binary plists too."""
        profile = _configuration([_webclip()])
        self.assertEqual(lint(plistlib.dumps(profile, fmt=plistlib.FMT_BINARY)), [])

    def test_seed_fixed_profile(self) -> None:
        """The seed developer's working profile lints without findings."""
        self.assertEqual(lint(SEED_FIXED), [])

    def test_seed_broken_profile(self) -> None:
        """The seed developer's first profile gets every mistake that cost days, each at its path."""
        self.assertEqual(
            _errors(lint(SEED_BROKEN)),
            [
                ("PayloadIdentifier", "missing required key"),
                ("PayloadUUID", "missing required key"),
                ("PayloadContent[0].PayloadContent", "must be <data>, not <string>"),
                (
                    "PayloadContent[0].PayloadContent",
                    "duplicate key; only the last one counts",
                ),
            ],
        )

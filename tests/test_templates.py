"""Tests for otad.templates: loading, selecting and rendering phase-3 templates."""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from otad.payloads import validate_payloads
from otad.tap import load_profile_templates
from otad.templates import (
    DEFAULT_DIRECTORY,
    VARIABLES,
    Template,
    TemplateError,
    load_templates,
    needs_scep_challenge,
    render,
    select,
)

ROOT = Path(__file__).parent.parent


def _webclip(**extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "PayloadType": "com.apple.webClip.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": "com.example.otad.webclip",
        "Label": "$ORGANIZATION",
        "URL": "$INTRANET_URL",
        "IsRemovable": True,
    }
    payload.update(extra)
    return payload


def _pkcs12(content: object) -> dict[str, Any]:
    return {
        "PayloadType": "com.apple.security.pkcs12",
        "PayloadVersion": 1,
        "PayloadIdentifier": "com.example.otad.identity",
        "PayloadContent": content,
        "Password": "$UDID",
    }


VALUES = {
    "UDID": "00008030-001A2B3C4D5E6F70",
    "ORGANIZATION": "ACME Inc.",
    "INTRANET_URL": "https://intranet.example.com/",
    "SCEP_URL": "https://otad.example.com:8443/scep",
    "SCEP_CHALLENGE": "one-time",
}


class TemplatesTests(TestCase):
    """Template files load in each form, are refused when wrong, and render per device."""

    def directory(self, files: dict[str, Any]) -> Path:
        """A fresh directory holding `files`: plist values are dumped as XML, bytes written as is."""
        directory = Path(self.mktemp())
        directory.mkdir()
        for name, content in files.items():
            data = content if isinstance(content, bytes) else plistlib.dumps(content)
            (directory / name).write_bytes(data)
        return directory

    def test_bare_array(self) -> None:
        """A plist that is an array of payloads loads as a template matching every device."""
        [template] = load_templates(self.directory({"clip.plist": [_webclip()]}))
        self.assertEqual(template.name, "clip.plist")
        self.assertEqual(template.match, {})
        self.assertEqual(template.payloads, (_webclip(),))

    def test_own_form(self) -> None:
        """otad's own form carries a Match dictionary beside PayloadContent."""
        document = {"Match": {"PRODUCT": "iPad"}, "PayloadContent": [_webclip()]}
        [template] = load_templates(self.directory({"ipad.plist": document}))
        self.assertEqual(template.match, {"PRODUCT": "iPad"})
        self.assertEqual(template.payloads, (_webclip(),))

    def test_configurator_export(self) -> None:
        """An Apple Configurator profile contributes only its PayloadContent payloads."""
        exported = {
            "PayloadType": "Configuration",
            "PayloadVersion": 1,
            "PayloadIdentifier": "Mac.0A1B2C3D",
            "PayloadUUID": "0A1B2C3D-1111-2222-3333-444455556666",
            "PayloadDisplayName": "Intranet",
            "PayloadRemovalDisallowed": False,
            "PayloadContent": [
                _webclip(PayloadUUID="9F8E7D6C-1111-2222-3333-444455556666"),
            ],
        }
        [template] = load_templates(self.directory({"Intranet.mobileconfig": exported}))
        self.assertEqual(template.name, "Intranet.mobileconfig")
        self.assertEqual(len(template.payloads), 1)
        self.assertEqual(template.payloads[0]["PayloadIdentifier"], "com.example.otad.webclip")

    def test_sorted_and_filtered(self) -> None:
        """Only .plist and .mobileconfig files load, in file-name order."""
        directory = self.directory(
            {
                "20-b.mobileconfig": [_webclip()],
                "10-a.plist": [_webclip()],
                "README.md": b"# not a template",
            }
        )
        names = [t.name for t in load_templates(directory)]
        self.assertEqual(names, ["10-a.plist", "20-b.mobileconfig"])

    def test_empty_directory(self) -> None:
        """A directory without templates is an error naming the directory."""
        directory = self.directory({"README.md": b"# nothing"})
        error = self.assertRaises(TemplateError, load_templates, directory)
        self.assertIn(str(directory), str(error))
        self.assertIn("no *.plist or *.mobileconfig templates", str(error))

    def test_missing_directory(self) -> None:
        """A directory that does not exist is a TemplateError, not an OSError."""
        missing = Path(self.mktemp())
        error = self.assertRaises(TemplateError, load_templates, missing)
        self.assertIn("cannot list templates", str(error))

    def test_missing_identifier_refused(self) -> None:
        """A payload without PayloadIdentifier is refused, naming the file and key path."""
        payload = _webclip()
        del payload["PayloadIdentifier"]
        directory = self.directory({"bad.plist": {"PayloadContent": [payload]}})
        error = self.assertRaises(TemplateError, load_templates, directory)
        self.assertEqual(
            str(error),
            "bad.plist: PayloadContent[0].PayloadIdentifier: missing required key",
        )

    def test_string_pkcs12_refused(self) -> None:
        """A PKCS#12 payload holding <string> instead of <data> is refused."""
        directory = self.directory({"p12.plist": [_pkcs12("MIIKAQIBAzCCCcc=")]})
        error = self.assertRaises(TemplateError, load_templates, directory)
        self.assertEqual(str(error), "p12.plist: [0].PayloadContent: must be <data>, not <string>")

    def test_unknown_variable_refused(self) -> None:
        """An unknown $NAME (or ${NAME}) in a string is refused with its key path."""
        for text in ("$HOSTNAME", "x${udid}"):
            directory = self.directory({"var.plist": [_webclip(Label=text)]})
            error = self.assertRaises(TemplateError, load_templates, directory)
            self.assertIn("var.plist: [0].Label: unknown variable $", str(error))

    def test_lone_dollar_refused(self) -> None:
        """A $ that starts no variable is refused, pointing at $$."""
        directory = self.directory({"cost.plist": [_webclip(Label="costs 5$ a month")]})
        error = self.assertRaises(TemplateError, load_templates, directory)
        self.assertIn("cost.plist: [0].Label: a $ that starts no variable", str(error))

    def test_signed_refused(self) -> None:
        """A signed .mobileconfig (DER, starting with a SEQUENCE) is refused."""
        directory = self.directory({"signed.mobileconfig": b"\x30\x80\x06\x09*\x86H\x86\xf7\r\x01\x07\x02"})
        error = self.assertRaises(TemplateError, load_templates, directory)
        self.assertEqual(str(error), "signed.mobileconfig: signed .mobileconfig: export it unsigned")

    def test_not_plist_refused(self) -> None:
        """Bytes that are not a property list are refused with the file name."""
        directory = self.directory({"junk.plist": b"<plist><dict>"})
        error = self.assertRaises(TemplateError, load_templates, directory)
        self.assertTrue(str(error).startswith("junk.plist: not a property list"))

    def test_unknown_top_level_key_refused(self) -> None:
        """otad's own form allows only Match and PayloadContent."""
        directory = self.directory({"x.plist": {"PayloadContent": [], "Matches": {}}})
        error = self.assertRaises(TemplateError, load_templates, directory)
        self.assertIn("x.plist: Matches: unknown key", str(error))

    def test_substitution(self) -> None:
        """$NAME and ${NAME} are replaced, $$ is a literal $, and a missing value is empty."""
        template = Template(
            name="t",
            payloads=(_webclip(Label="${ORGANIZATION}_clip costs $$5 for $USERNAME"),),
            match={},
        )
        [payload] = render(template, VALUES)
        self.assertEqual(payload["Label"], "ACME Inc._clip costs $5 for ")
        self.assertEqual(payload["URL"], "https://intranet.example.com/")

    def test_keys_and_data_untouched(self) -> None:
        """Keys, <data>, numbers and booleans pass through rendering unchanged."""
        blob = b"$UDID is not substituted in data"
        template = Template(
            name="t",
            payloads=(_webclip(**{"$UDID": "key", "Icon": blob}),),
            match={},
        )
        [payload] = render(template, VALUES)
        self.assertEqual(payload["$UDID"], "key")
        self.assertEqual(payload["Icon"], blob)
        self.assertIs(payload["IsRemovable"], True)
        self.assertEqual(payload["PayloadVersion"], 1)

    def test_render_copies(self) -> None:
        """Rendering leaves the template's payloads as they were."""
        template = Template(name="t", payloads=(_webclip(),), match={})
        render(template, VALUES)
        self.assertEqual(template.payloads, (_webclip(),))
        self.assertNotIn("PayloadUUID", template.payloads[0])

    def test_fresh_uuid_stable_identifier(self) -> None:
        """Every render gives every payload a new PayloadUUID and keeps its PayloadIdentifier."""
        template = Template(
            name="t",
            payloads=(_webclip(PayloadUUID="9F8E7D6C-1111-2222-3333-444455556666"),),
            match={},
        )
        first, second = render(template, VALUES), render(template, VALUES)
        uuids = {first[0]["PayloadUUID"], second[0]["PayloadUUID"]}
        self.assertEqual(len(uuids), 2)
        self.assertNotIn("9F8E7D6C-1111-2222-3333-444455556666", uuids)
        self.assertEqual(first[0]["PayloadIdentifier"], second[0]["PayloadIdentifier"])
        self.assertEqual(first[0]["PayloadIdentifier"], "com.example.otad.webclip")

    def test_select_by_product(self) -> None:
        """The first template whose Match prefixes all fit wins; one without Match is a fallback."""
        ipad = Template(name="10-ipad.plist", payloads=(), match={"PRODUCT": "iPad"})
        ios17 = Template(
            name="20-iphone.plist",
            payloads=(),
            match={"PRODUCT": "iPhone", "VERSION": "21"},
        )
        other = Template(name="99-default.plist", payloads=(), match={})
        templates = [ipad, ios17, other]
        self.assertIs(select(templates, {"PRODUCT": "iPad8,1"}), ipad)
        self.assertIs(select(templates, {"PRODUCT": "iPhone15,2", "VERSION": "21A329"}), ios17)
        self.assertIs(select(templates, {"PRODUCT": "iPhone15,2", "VERSION": "20G75"}), other)
        self.assertIs(select(templates, {"PRODUCT": "iPhone15,2"}), other)

    def test_select_no_match(self) -> None:
        """Without a fitting template select raises TemplateError naming the attribute."""
        ipad = Template(name="ipad.plist", payloads=(), match={"PRODUCT": "iPad"})
        error = self.assertRaises(TemplateError, select, [ipad], {"PRODUCT": "iPhone10,4"})
        self.assertIn("PRODUCT='iPhone10,4'", str(error))

    def test_select_non_string_attribute(self) -> None:
        """An attribute that is not a string (say <data>) never matches a prefix."""
        udid = Template(name="one.plist", payloads=(), match={"UDID": ""})
        self.assertRaises(TemplateError, select, [udid], {"UDID": b"\x00"})

    def test_needs_scep_challenge(self) -> None:
        """Only templates that use $SCEP_CHALLENGE (not the escaped $$SCEP_CHALLENGE) need one."""
        uses = Template(name="a", payloads=(_webclip(Label="${SCEP_CHALLENGE}"),), match={})
        escaped = Template(name="b", payloads=(_webclip(Label="$$SCEP_CHALLENGE"),), match={})
        self.assertTrue(needs_scep_challenge(uses))
        self.assertFalse(needs_scep_challenge(escaped))

    def test_default_template(self) -> None:
        """The shipped default reproduces Apple's sample and renders into valid payloads."""
        [template] = load_templates(DEFAULT_DIRECTORY)
        self.assertEqual(template.match, {})
        self.assertTrue(needs_scep_challenge(template))
        payloads = render(template, {name: f"value-{name}" for name in VARIABLES} | VALUES)
        self.assertEqual(validate_payloads(payloads), [])
        webclip, scep = payloads
        self.assertEqual(webclip["PayloadType"], "com.apple.webClip.managed")
        self.assertEqual(webclip["Label"], "ACME Inc.")
        self.assertEqual(webclip["URL"], "https://intranet.example.com/")
        self.assertIs(webclip["IsRemovable"], True)
        self.assertEqual(scep["PayloadType"], "com.apple.security.scep")
        self.assertEqual(scep["PayloadDisplayName"], "Client Authentication")
        self.assertEqual(
            scep["PayloadContent"],
            {
                "URL": "https://otad.example.com:8443/scep",
                "Subject": [
                    [["O", "ACME Inc."]],
                    [["CN", "00008030-001A2B3C4D5E6F70"]],
                ],
                "Challenge": "one-time",
                "Keysize": 2048,
                "Key Type": "RSA",
                "Key Usage": 5,
            },
        )

    def test_etc_copy_matches_default(self) -> None:
        """etc/profiles/default.plist is the same file as the package's built-in default."""
        self.assertEqual(
            (ROOT / "etc" / "profiles" / "default.plist").read_bytes(),
            (DEFAULT_DIRECTORY / "default.plist").read_bytes(),
        )


class ProfileTemplatesStartupTests(TestCase):
    def test_empty_or_unset_directory_falls_back_to_default(self) -> None:
        """The daemon uses the shipped default when no directory is configured or the directory holds no templates."""
        empty = Path(self.mktemp())
        empty.mkdir()
        (empty / "README.md").write_text("not a template")
        self.assertEqual([t.name for t in load_profile_templates(empty)], ["default.plist"])
        self.assertEqual([t.name for t in load_profile_templates(None)], ["default.plist"])

    def test_missing_directory_stops_start(self) -> None:
        """A configured directory that does not exist is an error naming it, not a silent fallback."""
        error = self.assertRaises(TemplateError, load_profile_templates, Path("/nonexistent-otad-templates"))
        self.assertIn("/nonexistent-otad-templates", str(error))

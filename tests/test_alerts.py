"""The shipped Prometheus alerting rules: they parse as promtool reads them, each is complete, they use only
metrics otad exports, and the README shows exactly the shipped file."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from otad.metrics import Metrics

ROOT = Path(__file__).parent.parent
RULES = ROOT / "etc" / "prometheus" / "otad-alerts.yml"
_DURATION = re.compile(r"^\d+[smhdwy]$")
_NAME = re.compile(r"\b(otad_[a-z_]+)\b")


class AlertRulesTests(unittest.TestCase):
    def setUp(self) -> None:
        self.document = yaml.safe_load(RULES.read_text())

    def rules(self) -> list[dict[str, object]]:
        return [rule for group in self.document["groups"] for rule in group["rules"]]

    def test_structure(self) -> None:
        """One group of alerting rules, each with a unique name, an expression, a valid `for`, a severity and a
        summary; and the four asked for: an expiring certificate, failed logins, 5xx answers, not ready."""
        self.assertEqual(set(self.document), {"groups"})
        [group] = self.document["groups"]
        self.assertEqual(group["name"], "otad")
        names = [rule["alert"] for rule in self.rules()]
        self.assertEqual(len(names), len(set(names)))
        for rule in self.rules():
            self.assertLessEqual(set(rule), {"alert", "expr", "for", "labels", "annotations"}, rule["alert"])
            self.assertIsInstance(rule["expr"], str)
            self.assertRegex(str(rule.get("for", "0s")), _DURATION)
            self.assertIn(rule["labels"]["severity"], ("warning", "critical"))  # type: ignore[index]
            self.assertTrue(rule["annotations"]["summary"])  # type: ignore[index]
        self.assertLessEqual({"OtadCertificateExpiring", "OtadLoginFailures", "OtadServerErrors", "OtadNotReady"}, set(names))
        expiring = next(rule for rule in self.rules() if rule["alert"] == "OtadCertificateExpiring")
        self.assertIn("30 * 86400", str(expiring["expr"]))

    def test_only_exported_metrics(self) -> None:
        """Every otad_ name in an expression is a series otad exports (a renamed metric would silence an alert)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
        exported = set()
        # Families without a sample yet (labelled series that nothing has set) are described all the same.
        for family in text_string_to_metric_families(Metrics().render()[0].decode()):
            exported.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        for rule in self.rules():
            used = set(_NAME.findall(str(rule["expr"])))
            self.assertTrue(used or "up{" in str(rule["expr"]), rule["alert"])
            self.assertLessEqual(used, exported, rule["alert"])

    def test_readme_shows_the_file(self) -> None:
        """The README's alert example is the shipped file, verbatim."""
        readme = (ROOT / "README.md").read_text()
        self.assertIn("```yaml\n" + RULES.read_text() + "```\n", readme)

"""Tests for otad.config: the ini file, overrides and validation."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

from twisted.trial import unittest

from otad import config
from otad.tap import Options


class ConfigTests(unittest.TestCase):
    def write(self, text: str) -> Path:
        path = Path(self.mktemp())
        path.write_text(text)
        return path

    def test_embedded_defaults(self) -> None:
        """With no file, otad runs on ssl:8443, a 15-minute challenge and the documented attributes."""
        settings = config.load(None, {"hostname": "otad.test"})
        self.assertEqual(settings.listen, ("ssl:8443",))
        self.assertEqual(settings.challenge_ttl, 900)
        self.assertEqual(settings.device_attributes, ("UDID", "VERSION", "PRODUCT", "SERIAL", "IMEI", "MEID"))
        self.assertEqual(settings.htpasswd, settings.data_dir / "htpasswd")
        self.assertTrue(settings.data_dir.is_absolute())

    def test_shipped_config_file_is_valid(self) -> None:
        """etc/otad.conf, which documents every key, loads with the same values as the embedded defaults."""
        shipped = Path(__file__).parent.parent / "etc" / "otad.conf"
        self.assertEqual(config.load(shipped, {"hostname": "h"}), config.load(None, {"hostname": "h"}))

    def test_shipped_config_file_matches_the_schema(self) -> None:
        """etc/otad.conf has every section and key of the schema, each set to exactly the schema's default text,
        and nothing else: the file is checked against the one schema, not kept in step with a copy."""
        import configparser

        shipped = configparser.ConfigParser(interpolation=None)
        shipped.optionxform = str  # type: ignore[assignment, method-assign]
        shipped.read(Path(__file__).parent.parent / "etc" / "otad.conf", encoding="utf-8")
        schema = config.settings_schema()
        self.assertEqual(set(shipped.sections()), set(schema))
        for section, settings in schema.items():
            self.assertEqual(set(shipped[section]), set(settings), section)
            for key, setting in settings.items():
                self.assertEqual(shipped[section][key], setting.default, f"[{section}] {key}")

    def test_file_values(self) -> None:
        """Values in the file are parsed: durations, lists, URLs."""
        path = self.write(
            "[server]\nlisten = ssl:9443 tcp:9080\npublic_url = https://otad.example.com:9443/\n"
            "[enrollment]\nchallenge_ttl = 2h\ndevice_attributes = UDID SERIAL\n[ca]\nkey_size = 4096\n"
        )
        settings = config.load(path)
        self.assertEqual(settings.listen, ("ssl:9443", "tcp:9080"))
        self.assertEqual(settings.public_url, "https://otad.example.com:9443")
        self.assertEqual(settings.challenge_ttl, 7200)
        self.assertEqual(settings.device_attributes, ("UDID", "SERIAL"))
        self.assertEqual(settings.ca_key_size, 4096)

    def test_flags_override_file(self) -> None:
        """Command-line values win over the file; unset flags leave the file's values."""
        path = self.write("[server]\nlisten = ssl:9443\nhostname = fromfile.example\n")
        settings = config.load(path, {"listen": ["tcp:1234", "ssl:4321"], "hostname": None, "data_dir": "/tmp/x"})
        self.assertEqual(settings.listen, ("tcp:1234", "ssl:4321"))
        self.assertEqual(settings.hostname, "fromfile.example")
        self.assertEqual(settings.data_dir, Path("/tmp/x"))

    def test_unknown_key(self) -> None:
        """An unknown key stops the load with a one-line error that names it."""
        error = self.assertRaises(config.ConfigError, config.load, self.write("[server]\nlisten_on = ssl:1\n"))
        self.assertEqual(str(error), "unknown config key [server] listen_on")

    def test_unknown_section(self) -> None:
        """An unknown section is refused by name."""
        error = self.assertRaises(config.ConfigError, config.load, self.write("[sever]\nlisten = ssl:1\n"))
        self.assertIn("[sever]", str(error))

    def test_bad_values(self) -> None:
        """Each bad value is refused with the key's name in the message, on one line."""
        cases = {
            "[enrollment]\nchallenge_ttl = soon\n": "[enrollment] challenge_ttl",
            "[enrollment]\nchallenge_ttl = 0\n": "[enrollment] challenge_ttl",
            "[ca]\nkey_size = 1024\n": "[ca] key_size",
            "[server]\npublic_url = ftp://x\n": "[server] public_url",
            "[server]\nmax_body = lots\n": "[server] max_body",
            "[server]\nhostname = bad_name!\n": "[server] hostname",
            "[enrollment]\nidentifier = nodots\n": "[enrollment] identifier",
            '[enrollment]\nrealm = a"b\n': "[enrollment] realm",
            "[enrollment]\ndevice_attributes = SERIAL\n": "[enrollment] device_attributes",
        }
        for text, key in cases.items():
            error = self.assertRaises(config.ConfigError, config.load, self.write(text))
            self.assertIn(key, str(error))
            self.assertNotIn("\n", str(error))

    def test_metrics_listener(self) -> None:
        """[metrics] listen is off by default, takes plain-HTTP endpoints checked like --listen, and refuses ssl:
        (and a typo) with one line naming the key."""
        self.assertEqual(config.load(None, {"hostname": "h"}).metrics_listeners, ())
        settings = config.load(self.write("[metrics]\nlisten = tcp:9464:interface=127.0.0.1 unix:/run/otad/metrics.sock\n"))
        self.assertEqual(
            [listener.plain for listener in settings.metrics_listeners], ["tcp:9464:interface=127.0.0.1", "unix:/run/otad/metrics.sock"]
        )
        cases = {
            "ssl:9464": "the metrics listener serves plain HTTP: use tcp:PORT:interface=127.0.0.1 or unix:PATH",
            "tcp:9464:interface=localhost": "interface must be an IP address, not 'localhost'",
            "tcp:99999": "port must be a number from 0 to 65535",
        }
        for description, reason in cases.items():
            error = self.assertRaises(config.ConfigError, config.load, self.write(f"[metrics]\nlisten = {description}\n"))
            self.assertTrue(str(error).startswith(f"bad value for [metrics] listen: {description!r}: "), str(error))
            self.assertIn(reason, str(error))
            self.assertNotIn("\n", str(error))

    def test_not_ini(self) -> None:
        """A file that is not ini is refused with one line, and a missing file is named."""
        error = self.assertRaises(config.ConfigError, config.load, self.write("listen = 1\n"))
        self.assertIn("not valid ini", str(error))
        missing = self.assertRaises(config.ConfigError, config.load, Path("/nonexistent/otad.conf"))
        self.assertIn("/nonexistent/otad.conf", str(missing))

    def test_durations(self) -> None:
        """parse_duration understands s, m, h, d and bare seconds."""
        self.assertEqual([config.parse_duration(t) for t in ("90", "90s", "15m", "1h", "2d")], [90, 90, 900, 3600, 172800])
        self.assertRaises(ValueError, config.parse_duration, "-1m")


class OptionsTests(unittest.TestCase):
    def test_repeatable_listen(self) -> None:
        """--listen can be given several times and every value is kept, in order."""
        options = Options()
        options.parseOptions(["--listen", "ssl:1", "--listen", "tcp:2", "--hostname", "h.example", "--data-dir", "/tmp/d"])
        self.assertEqual(options["settings"].listen, ("ssl:1", "tcp:2"))
        self.assertEqual(options["settings"].hostname, "h.example")

    def test_bad_config_exits_1_with_one_line(self) -> None:
        """A bad config file ends option parsing with exit status 1 and one stderr line naming the key (no usage text)."""
        path = Path(self.mktemp())
        path.write_text("[server]\nbogus = 1\n")
        err = io.StringIO()
        with redirect_stderr(err):
            error = self.assertRaises(SystemExit, Options().parseOptions, ["--config", str(path)])
        self.assertEqual(error.code, 1)
        self.assertEqual(err.getvalue(), "otad cannot start: unknown config key [server] bogus\n")

"""docs/configuration.md documents every key the config parser accepts, and no other.

The keys come from the parser itself: every ExpectMap(node, key, {"a", "b", ...}) call
in config/config.cc lists the keys one mapping allows. Where that mapping sits in the
file (server, a device, a model, a model's warmup...) follows from the Parser method
the call is in and, inside ParseModel, from the `field == "..."` branch around it. A
call this test cannot place fails the test, so a new section of the parser has to be
taught here (and documented) before the suite passes again.
"""
import os
import re
import unittest

SOURCE_DIR = os.environ.get("SPLITLEARND_SOURCE_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PARSER = os.path.join(SOURCE_DIR, "config", "config.cc")
DOC = os.path.join(SOURCE_DIR, "docs", "configuration.md")

# Parser method -> prefix of the keys its ExpectMap calls allow. ParseModel's nested
# mappings are found through their `field == "..."` branch instead.
METHOD_PREFIX = {
    "Parse": "",
    "ParseServer": "server.",
    "ParseTls": "server.tls.",
    "ParseAuth": "server.auth.",
    "ParseDevice": "devices.<name>.",
    "ParseTensorSpec": "models[].warmup.inputs[].",
    "ParseModel": "models[].",
}

_METHOD = re.compile(r"^  [A-Za-z_][\w:<>, ]*?\b(Parse\w*)\((?:[^;{]*)\)\s*(?:const\s*)?\{", re.M)
_EXPECT = re.compile(r"ExpectMap\(\s*(\w+)\s*,\s*([^,]+?)\s*,\s*\{([^}]*)\}\s*\)", re.S)
_FIELD = re.compile(r'field == "(\w+)"')
_QUOTED = re.compile(r'"([^"]+)"')
_DOC_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|(.*)$")


def parser_keys(source):
    """Every fully qualified key the parser accepts, e.g. 'models[].batching.max_delay_us'."""
    methods = [(m.start(), m.group(1)) for m in _METHOD.finditer(source)]
    if not methods:
        raise AssertionError("no Parse* methods found in config/config.cc")
    keys = set()
    for call in _EXPECT.finditer(source):
        before = [name for start, name in methods if start < call.start()]
        if not before:
            raise AssertionError(f"ExpectMap outside a Parse* method: {call.group(0)!r}")
        method = before[-1]
        if method not in METHOD_PREFIX:
            raise AssertionError(f"ExpectMap in {method}(): this test does not know where its keys live; "
                                 f"add {method} to METHOD_PREFIX (and document the keys)")
        prefix = METHOD_PREFIX[method]
        if method == "ParseModel" and call.group(2) != "k":
            # A nested mapping: the innermost `field == "x"` branch before the call names it.
            method_start = max(start for start, name in methods if start < call.start())
            fields = _FIELD.findall(source, method_start, call.start())
            if not fields:
                raise AssertionError(f"cannot tell which model key {call.group(0)!r} belongs to")
            prefix += fields[-1] + "."
        names = _QUOTED.findall(call.group(3))
        if not names:
            raise AssertionError(f"ExpectMap with no keys: {call.group(0)!r}")
        keys.update(prefix + n for n in names)
    return keys


def documented_keys(doc):
    """Keys in the first column of the document's tables: {key: [other cells]}."""
    keys = {}
    for line in doc.splitlines():
        m = _DOC_KEY.match(line)
        if m:
            keys[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return keys


class ConfigDocTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(PARSER) as f:
            cls.keys = parser_keys(f.read())
        with open(DOC) as f:
            cls.documented = documented_keys(f.read())

    def test_the_parser_yields_the_known_sections(self):
        # Guards the extraction itself: if it silently found nothing, the next test
        # would pass vacuously.
        for key in ("server.listen", "server.metrics_listen", "model_root", "devices.<name>.queue_capacity",
                    "models[].id", "models[].warmup.runs", "models[].warmup.inputs[].shape",
                    "models[].batching.max_delay_us", "models[].sessions.idle_timeout_s",
                    "models[].training.learning_rate", "models[].compute_dtype", "models[].sha256"):
            self.assertIn(key, self.keys)
        self.assertGreater(len(self.keys), 40)

    def test_every_parser_key_is_documented(self):
        missing = sorted(self.keys - set(self.documented))
        self.assertEqual(missing, [], f"keys accepted by config/config.cc but missing from docs/configuration.md: "
                                      f"{missing}")

    def test_no_documented_key_is_unknown_to_the_parser(self):
        stale = sorted(set(self.documented) - self.keys)
        self.assertEqual(stale, [], f"docs/configuration.md lists keys the parser does not accept: {stale}")

    def test_each_key_has_a_type_a_default_and_a_meaning(self):
        for key, cells in self.documented.items():
            with self.subTest(key=key):
                self.assertGreaterEqual(len(cells), 3, f"row of {key} needs type | default | meaning")
                for name, cell in zip(("type", "default", "meaning"), cells):
                    self.assertTrue(cell, f"{key}: empty {name}")


if __name__ == "__main__":
    unittest.main()

"""The web page's parameter controls come from /info, not from its own markup.

The page's script runs in Node (no browser needed) against stub elements: its controls are
built from `/info`'s `parameters` and `readParameters` sends exactly what the user set.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from backtrack.params import MODES, POLICIES, GenerationParams
from server.api.admin import INDEX_PAGE, parameters
from server.limits import Limits

HARNESS = r"""
const vm = require("vm");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const elements = {};
const element = (id) => (elements[id] ??= {
  id, value: "", checked: false, innerHTML: "", textContent: "", dataset: {}, disabled: false,
  classList: { toggle() {}, add() {}, remove() {} }, addEventListener() {}, append() {},
  closest() { return {}; },
});
const sandbox = {
  document: { getElementById: element }, fetch: () => new Promise(() => {}), setTimeout,
  performance: { now: () => 0 }, requestAnimationFrame() {}, console,
};
vm.createContext(sandbox);
vm.runInContext(input.script + "\nglobalThis.page = { buildControls, readParameters };", sandbox);
sandbox.page.buildControls(input.parameters);
const html = elements.params.innerHTML;
for (const [name, value] of Object.entries(input.set)) {
  if (typeof value === "boolean") element(name).checked = value; else element(name).value = value;
}
console.log(JSON.stringify({ html, sent: sandbox.page.readParameters() }));
"""


def page_script() -> str:
    return re.findall(r"<script>(.*?)</script>", INDEX_PAGE.read_text(), re.S)[-1]


def run_page(described: list[dict], set_values: dict) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: `apt-get install nodejs` runs this check")
    payload = json.dumps({"script": page_script(), "parameters": described, "set": set_values})
    result = subprocess.run(
        [node, "-e", HARNESS], input=payload, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_page_spells_out_no_parameter_mode_or_policy():
    markup = INDEX_PAGE.read_text()
    for name in GenerationParams.model_fields:
        assert f'id="{name}"' not in markup
    for word in (*MODES, *POLICIES):
        assert f">{word}<" not in markup and f'"{word}"' not in markup


def test_controls_are_built_from_info_and_send_only_what_was_set():
    described = parameters(
        Limits(max_input_tokens=64, max_new_tokens=50, default_max_new_tokens=20)
    )
    described.append(
        {"name": "knob", "type": "integer", "nullable": False, "default": 3, "minimum": 0,
         "description": "a parameter the page has never heard of"}
    )  # fmt: skip
    answer = run_page(
        described,
        {"max_new_tokens": "16", "mode": "keep", "do_sample": True, "stop": "END", "knob": "7"},
    )
    html = answer["html"]
    for entry in described:
        assert f'id="{entry["name"]}"' in html
    assert re.search(r'id="max_new_tokens" type="number" min="1" max="50"', html)
    assert re.search(r'id="top_p" type="number" min="0" max="1"', html)
    assert all(f"<option>{policy}</option>" in html for policy in POLICIES)
    assert 'title="a parameter the page has never heard of"' in html
    assert answer["sent"] == {
        "max_new_tokens": 16,
        "do_sample": True,
        "stop": ["END"],
        "mode": "keep",
        "knob": 7,
    }

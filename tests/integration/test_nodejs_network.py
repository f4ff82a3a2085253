"""Issue 13 with issue 14: a Node.js instance's network modes (the keeper leaves only loopback
for mode `none`; `outbound` keeps the pooled instance's interface), in the network lab."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import Api
from tests.integration.test_nodejs import deploy_js
from tests.network.conftest import NODE_ADDRESS, lab, node, node_api  # noqa: F401 - the lab's fixtures

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="no `node` on this machine (make installs it)")

FETCH = """
    const http = require('http');
    const os = require('os');
    exports.handler = async () => {
      const fetched = await new Promise((resolve) => {
        const request = http.get({host: '198.51.100.10', path: '/hello', timeout: 3000}, (response) => {
          let body = '';
          response.on('data', (chunk) => { body += chunk; });
          response.on('end', () => resolve({body}));
        });
        request.on('error', (error) => resolve({error: error.code}));
        request.on('timeout', () => request.destroy(new Error('timeout')));
      });
      return {interfaces: Object.keys(os.networkInterfaces()).sort(), fetched};
    };
"""


def test_an_outbound_nodejs_function_reaches_the_outside_through_nat(node_api: Api) -> None:  # noqa: F811
    body = node_api.invoke(deploy_js(node_api, FETCH, timeout=30)).json()
    assert body["fetched"] == {"body": f"outside {NODE_ADDRESS}"}, body
    assert "lo" in body["interfaces"] and len(body["interfaces"]) == 2, body


def test_a_nodejs_function_in_mode_none_keeps_loopback_only(node_api: Api) -> None:  # noqa: F811
    body = node_api.invoke(deploy_js(node_api, FETCH, timeout=30, network={"mode": "none"})).json()
    assert body == {"interfaces": ["lo"], "fetched": {"error": "ENETUNREACH"}}, body

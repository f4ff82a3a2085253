"""Issue 13: which node serves each Node.js name, and the keeper's single request."""

from __future__ import annotations

import socket

import pytest

from fgd.errors import InvalidParameter
from fgd.interpreters import Catalogue
from fgd.nodejs import NAMES, NodeCatalogue, NodeRuntime
from runtimes import protocol
from runtimes.nodejs import keeper
from sandbox.policy import EnterPolicy, Protections


def node(major: int) -> NodeRuntime:
    return NodeRuntime(path="/usr/bin/node", version=f"{major}.3.1", major=major, prefix="/usr")


def test_the_installed_major_is_exact_and_older_names_are_served_by_it() -> None:
    catalogue = NodeCatalogue(node(20))
    assert catalogue.names() == list(NAMES)
    served = catalogue.served_by()
    assert served["Node.js20.15"]["exact"] is True
    assert served["Node.js8.10"] == {"path": "/usr/bin/node", "version": "20.3.1", "exact": False}


def test_a_node_18_serves_up_to_18_and_refuses_20_naming_what_is_installed() -> None:
    catalogue = NodeCatalogue(node(18))
    assert "Node.js20.15" not in catalogue.names() and "Node.js18.15" in catalogue.names()
    with pytest.raises(InvalidParameter, match=r"needs Node.js 20 or newer.*installed: 18.3.1"):
        catalogue.check("Node.js20.15")


def test_exact_versions_serve_only_the_installed_major() -> None:
    catalogue = NodeCatalogue(node(20), exact=True)
    assert catalogue.names() == ["Node.js20.15"]
    with pytest.raises(InvalidParameter, match="exact_versions"):
        catalogue.check("Node.js18.15")


@pytest.mark.parametrize("name", ["Node.js20.1", "Node.js21.0", "Node.js", "Node.js20.15\n", "Node.js" + "9" * 5000])
def test_names_functiongraph_does_not_have_are_refused(name: str) -> None:
    with pytest.raises(InvalidParameter) as raised:
        NodeCatalogue(node(20)).check(name)
    assert len(str(raised.value)) < 400


def test_no_node_or_one_too_old_refuses_every_name_saying_why() -> None:
    assert NodeCatalogue(None).names() == []
    with pytest.raises(InvalidParameter, match="has no `node`"):
        NodeCatalogue(None).check("Node.js20.15")
    with pytest.raises(InvalidParameter, match=r"older than Node\.js 18"):
        NodeCatalogue(node(16)).check("Node.js16.17")


def test_without_the_built_codec_every_name_is_refused_naming_make_nodejs() -> None:
    catalogue = NodeCatalogue(node(20), built=False)
    assert catalogue.names() == []
    with pytest.raises(InvalidParameter, match="make nodejs"):
        catalogue.check("Node.js20.15")


def test_the_python_catalogue_answers_for_node_names_once_given_them() -> None:
    catalogue = Catalogue([])
    catalogue.nodejs = NodeCatalogue(node(20))
    assert catalogue.names() == list(NAMES)
    assert catalogue.check("Node.js12.13").major == 20
    assert catalogue.serving("Node.js12.13") is catalogue.nodejs.node
    assert catalogue.default_name() is None  # never a Node.js name


def specialize(uid: int, protections: Protections | None = None) -> bytes:
    # (Nothing is mounted here: without namespaces, mounts and credentials the keeper has nothing
    # to do. With namespaces on it would leave the network for an empty namespace of its own, and
    # in this process that is the test run's: it would lose every daemon on loopback.)
    protections = protections or Protections(namespaces=False, mounts=False, credentials=False)
    policy = EnterPolicy([], "/opt/function", 512, uid, uid, protections=protections)
    identity = protocol.FunctionIdentity("p", "default", "f", "latest", "", 128, 300, 3)
    frame = protocol.Specialize("/opt/function/code", "index.handler", "", 3, {}, identity, sandbox=policy)
    return protocol.encode(frame)


def launch(uid: int) -> protocol.Launch:
    return protocol.Launch(["/usr/bin/node"], {}, EnterPolicy([], "/opt/function", 512, uid, uid))


def answer(request: bytes, frame: protocol.Launch) -> bytes:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(request)
        keeper._serve_one_request(ours, frame)
        ours.close()  # as keeper.launch does: the channel goes with the one request
        chunks = []
        while chunk := theirs.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def test_the_keeper_answers_one_specialize_and_closes_the_channel() -> None:
    assert answer(specialize(200001), launch(200001)) == b"ok"


def test_the_keeper_refuses_a_frame_for_another_uid_or_of_another_kind() -> None:
    assert answer(specialize(0), launch(200001)).startswith(b"error: the Specialize frame names another uid")
    assert answer(protocol.encode(protocol.Shutdown()), launch(1)).startswith(b"error: expected a Specialize")
    assert answer(protocol.HEADER.pack(3) + b"\xc1\xc1\xc1", launch(1)).startswith(b"error: undecodable frame")


def test_the_keeper_does_not_read_a_request_larger_than_a_specialize_frame() -> None:
    assert answer(protocol.HEADER.pack(keeper.MAX_REQUEST + 1), launch(1)) == b""


def test_the_keeper_refuses_to_start_a_function_its_uid_could_not_read() -> None:
    # Without mounts the code stays in the state dir: only a function running as root could read it.
    refused = answer(specialize(7, Protections(mounts=False)), launch(7))
    assert refused.startswith(b"error: Node.js functions need the sandbox's mounts")

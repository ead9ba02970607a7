"""The package layout: public names importable from ``microbus``, and each layer importing only the layers below."""

from __future__ import annotations

import ast
from pathlib import Path

import microbus

PUBLIC = {
    "PubSubMessageSchema", "PubSubMessageCodec", "schema", "SchemaRegistry", "AWSSettings", "SNSTransport",
    "SQSTransport", "SNSProducer", "TopicArns", "SQSConsumer", "SQSMessage", "QueueInfo", "BatchAcker", "handles",
    "HandlerRegistry", "SQSMessageDispatcher", "RetryPolicy", "compute_backoff", "Outcome", "Action", "Result",
    "Middleware", "IdempotencyGuard", "IdempotencyStore", "DynamoDBIdempotencyStore", "MemoryIdempotencyStore",
    "Worker", "VisibilityHeartbeat", "ConsumerDaemon", "Parallel", "callback", "register_target", "current_cid",
    "ParallelReporter", "FailureMode", "CallbackRunner", "CallbackDaemon", "FanInStore", "MicrobusError",
    "ConfigurationError", "TopicNotDefinedError", "CodecError", "DecodeError", "MessageValidationError",
    "MessageTooLargeError", "TransportError", "EndpointUnreachableError", "TransientTransportError",
    "QueueNotFoundError", "TopicNotFoundError", "PublishError", "PatternError", "ResponseTooLargeError",
    "ResponseNotSerializableError", "FanInStateError", "Nack", "SkipMessage", "IgnoreMessage", "LifecycleEvent",
    "LifecycleObserver", "EventKind", "MessageState", "FanOutPublishError", "AccessDeniedError",
    "S3PayloadStore", "PayloadPointer", "Requester", "Replier", "PayloadError", "PayloadMissingError",
    "PayloadUnavailableError", "RequestTimeoutError", "RemoteHandlerError",
}  # fmt: skip

# Lowest first: a module may import its own layer and the layers before it.
# web and outbox sit above producing (they defer or store what it publishes); outbox's relay reuses consume's backoff.
LAYERS = [
    "errors", "wire", "produce", "consume", "patterns", "web", "outbox", "topology", "ops", "testing", "compat", "cli"
]  # fmt: skip
ROOT = Path(microbus.__file__).parent


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "microbus" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def imports_of(path: Path, *, lazy: bool = True) -> set[str]:
    """The modules a file imports; ``lazy`` False leaves out imports inside functions."""
    tree = ast.parse(path.read_text())
    if lazy:
        nodes = list(ast.walk(tree))
    else:
        nodes = [n for top in tree.body for n in ([top] + (top.body if isinstance(top, ast.If) else []))]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_public_names_import_from_the_package():
    missing = [name for name in sorted(PUBLIC) if not hasattr(microbus, name)]
    assert missing == []
    assert PUBLIC <= set(microbus.__all__)


def test_each_layer_imports_only_the_layers_below_it():
    upward = []
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        own = layer_of(".".join(relative.parts))
        if own is None:
            continue
        for imported in imports_of(path):
            other = layer_of(imported)
            if other is not None and LAYERS.index(other) > LAYERS.index(own):
                upward.append(f"{relative}: {imported}")
    assert upward == []


def test_the_layers_are_subpackages():
    for layer in LAYERS[1:]:
        assert (ROOT / layer / "__init__.py").is_file(), layer


def test_no_module_imports_form_a_cycle():
    # Module-level and TYPE_CHECKING imports; an import inside a function is a deliberate, lazy edge.
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        modules[name] = path
    graph = {
        name: {imported for imported in imports_of(path, lazy=False) if imported in modules and imported != name}
        for name, path in modules.items()
        if not path.name == "__init__.py"  # packages re-export; their own modules never import them
    }
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for start in graph:
        visit(start, [start])
    assert cycles == []

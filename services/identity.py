"""Who is calling: identities from client certificates, and which identity may call which RPC.

With mTLS (a service's ``tls_client_ca`` is set) every caller has shown a certificate from the
federation's CA; its identity is the certificate's one ``fedmkt:`` URI SAN (``fedmkt certs``
writes it, ``services.certs``):

* ``fedmkt:controller`` — the round controller, the orchestrator that calls everyone;
* ``fedmkt:aligner`` — the aligner (it calls no one);
* ``fedmkt:operator:<name>`` — operator tools: ``run`` is the containers' run job, which fetches
  the final adapters and submits runs;
* ``fedmkt:participant:<name>`` — the server LLM or a client SLM named ``<name>`` in the
  federation config.

``RULES`` says per RPC who may call it (``who`` patterns: an exact identity, ``kind:*`` for every
name of a kind, ``*`` for any certificate the CA signed) and, for RPCs whose messages name a
participant, what a participant may claim. Participants never call each other; the controller
pipes knowledge source -> aligner -> destination. A call outside the rules is answered
PERMISSION_DENIED naming the caller, the RPC and who may call it. RPCs not listed (health,
reflection) are open to every certificate from the CA. ``IdentityGate`` (a server interceptor,
installed by ``services.common.build_server`` and switched on by ``bind`` when the server
credentials are mTLS) applies them; the setting ``tls_allow`` adds callers per RPC.

No ``cryptography`` here: gRPC's auth context already holds the certificate's URI SANs
(``peer_uri``), so the services' image does not need it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedmkt.config import NAME_PATTERN

log = logging.getLogger("fedmkt.identity")

PREFIX = "fedmkt:"
CONTROLLER = "fedmkt:controller"
ALIGNER = "fedmkt:aligner"
OPERATORS = "fedmkt:operator:*"
PARTICIPANTS = "fedmkt:participant:*"
ANY = "*"
KINDS = ("operator", "participant")
# service names whose certificates are not a participant's (``fedmkt certs``)
RESERVED_NAMES = {"controller": CONTROLLER, "aligner": ALIGNER, "run": "fedmkt:operator:run"}


class PermissionDenied(Exception):  # noqa: N818 - named for the status
    """The caller's certificate does not allow what it asked (PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


def identity_of_name(name: str) -> str:
    """The identity a certificate for service ``name`` carries: ``controller``, ``aligner`` and
    ``run`` are the services of those names, ``operator:<n>`` / ``participant:<n>`` say the
    kind, any other name is a participant's."""
    if name in RESERVED_NAMES:
        return RESERVED_NAMES[name]
    kind, sep, rest = name.partition(":")
    if not sep:
        kind, rest = "participant", name
    if kind not in KINDS:
        raise ValueError(f"service name {name!r}: the kind before ':' must be one of {KINDS}")
    if not NAME_PATTERN.match(rest):
        raise ValueError(f"service name {name!r}: {rest!r} must be 1-63 characters of letters, "
                         "digits, '_', '.', '-' and start with a letter or digit (as a "
                         "participant name)")
    return f"{PREFIX}{kind}:{rest}"


def participant_name(identity: str | None) -> str | None:
    prefix = f"{PREFIX}participant:"
    return identity[len(prefix):] if identity and identity.startswith(prefix) else None


def matches(identity: str | None, pattern: str) -> bool:
    if pattern == ANY:
        return True
    if identity is None:
        return False
    if pattern.endswith(":*"):
        return identity.startswith(pattern[:-1])
    return identity == pattern


@dataclass(frozen=True)
class Caller:
    """What the TLS handshake established about a caller."""

    identity: str | None  # the one fedmkt: URI SAN, None when there is none (or several)
    subject: str          # the certificate's subject, for messages
    uris: tuple[str, ...] = ()

    @property
    def described(self) -> str:
        if self.identity:
            return self.identity
        if len(self.uris) > 1:
            return f"certificate {self.subject!r} (several fedmkt identities: {list(self.uris)})"
        return f"certificate {self.subject!r} (no fedmkt: URI SAN)"


def caller_of(context: grpc.ServicerContext) -> Caller | None:
    """The caller's certificate identity, or None when the call came without a certificate
    (plaintext or TLS without client authentication)."""
    auth = context.auth_context() or {}
    if not auth.get("x509_pem_cert") and not auth.get("x509_subject"):
        return None
    uris = tuple(u.decode("utf-8", "replace") for u in auth.get("peer_uri", ()))
    ours = tuple(u for u in uris if u.startswith(PREFIX))
    subject = b",".join(auth.get("x509_subject", ())).decode("utf-8", "replace")
    return Caller(ours[0] if len(ours) == 1 else None, subject, ours)


# ---------------------------------------------------------------------------- claims

Claim = Callable[[Caller, Any], None]  # raises PermissionDenied


def _knowledge_source(caller: Caller, message: Any) -> None:
    """AlignKnowledge: a participant may send only knowledge it computed itself."""
    if message is None or message.WhichOneof("payload") != "batch":
        return
    name = participant_name(caller.identity)
    source = message.batch.chunk.header.source
    if name is not None and source != name:
        raise PermissionDenied(
            f"{caller.identity} may not send knowledge as source {source!r}: a participant "
            f"sends only its own knowledge (header.source {name!r}); the controller may send "
            "any participant's")


def _tokenizer_label(caller: Caller, message: Any) -> None:
    """RegisterTokenizer: a participant labels tokenizers with its own name only."""
    name = participant_name(caller.identity)
    label = message.name
    if name is not None and label and label != name and not label.startswith(f"{name}/"):
        raise PermissionDenied(
            f"{caller.identity} may not register a tokenizer labelled {label!r}: a participant "
            f"labels its tokenizers {name!r} or {name + '/…'!r} (or gives no label); the "
            "controller may use any label")


@dataclass(frozen=True)
class Rule:
    who: tuple[str, ...]
    why: str
    claim: Claim | None = None


_P = "/fedmkt.v1.ParticipantService/"
_A = "/fedmkt.v1.AlignerService/"
_C = "/fedmkt.v1.ControllerService/"
_ORCHESTRATED = "the controller orchestrates participants; they never call each other"

RULES: dict[str, Rule] = {
    **{_P + m: Rule((CONTROLLER,), _ORCHESTRATED)
       for m in ("Describe", "TrainLocal", "ComputeKnowledge", "PublicTokens", "Distill",
                 "Evaluate")},
    _P + "ReceiveKnowledge": Rule((CONTROLLER,), "knowledge reaches a participant only "
                                  "through the controller, which pipes it from the aligner"),
    _P + "PushAdapter": Rule((CONTROLLER,), "only the controller replaces an adapter (FedAvg)"),
    _P + "FetchAdapter": Rule((CONTROLLER, OPERATORS), "adapters go to the controller and to "
                              "operator tools (the run job writes the final adapters)"),
    _A + "AlignKnowledge": Rule((CONTROLLER, PARTICIPANTS), "the controller, or a participant "
                                "for its own knowledge", _knowledge_source),
    _A + "RegisterTokenizer": Rule((CONTROLLER, PARTICIPANTS), "the controller, or a "
                                   "participant under its own label", _tokenizer_label),
    **{_A + m: Rule((ANY,), "read-only and stateless: any certificate from the CA")
       for m in ("GetTokenizer", "ListTokenizers", "GetVocabMap", "AlignText")},
    **{_C + m: Rule((OPERATORS,), "runs are submitted and watched by operator tools")
       for m in ("StartRun", "WatchRun", "GetRun", "ListRuns", "CancelRun")},
}


def rpc_key(method: str) -> str:
    """``/fedmkt.v1.ParticipantService/FetchAdapter`` -> ``ParticipantService/FetchAdapter``."""
    return method.rsplit(".", 1)[-1] if method.startswith("/fedmkt.v1.") else method


def check_allow(extra: Mapping[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """Validate the ``tls_allow`` setting: {"Service/Method": [identity pattern, ...]}."""
    known = {rpc_key(m): m for m in RULES}
    out: dict[str, tuple[str, ...]] = {}
    for key, patterns in extra.items():
        if key not in known:
            raise ValueError(f"tls_allow: unknown RPC {key!r}; one of {sorted(known)}")
        for pattern in patterns:
            if pattern != ANY and not pattern.startswith(PREFIX):
                raise ValueError(f"tls_allow[{key}]: {pattern!r} is not an identity "
                                 "(fedmkt:<kind>[:<name>], <kind>:* or *)")
        out[known[key]] = tuple(patterns)
    return out


@dataclass
class IdentityPolicy:
    """``RULES`` plus the callers a service's ``tls_allow`` setting adds per RPC."""

    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_setting(cls, allow: Mapping[str, list[str]] | None) -> IdentityPolicy:
        return cls(check_allow(allow or {}))

    def rule(self, method: str) -> Rule | None:
        rule = RULES.get(method)
        if rule is None and method.startswith("/fedmkt.v1."):
            rule = Rule((CONTROLLER,), "not in the rules: the controller only")
        if rule is not None and method in self.extra:
            rule = Rule(rule.who + self.extra[method], rule.why + "; more by tls_allow",
                        rule.claim)
        return rule

    def admit(self, method: str, rule: Rule, caller: Caller | None) -> Caller:
        """The caller, when ``rule`` lets it call ``method``; else PermissionDenied."""
        rpc = rpc_key(method)
        if caller is None:
            raise PermissionDenied(f"{rpc}: this service serves mTLS and the call came without "
                                   "a client certificate")
        if not any(matches(caller.identity, p) for p in rule.who):
            raise PermissionDenied(
                f"{caller.described} may not call {rpc}: only {', '.join(rule.who)} may "
                f"({rule.why})")
        return caller


def _denied(context: grpc.ServicerContext, exc: PermissionDenied) -> None:
    log.warning("permission denied: %s", exc)
    context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))


def _claimed(requests: Iterator, caller: Caller, claim: Claim) -> Iterator:
    for request in requests:
        if hasattr(request, "DESCRIPTOR"):  # undecodable ones are refused further in
            claim(caller, request)
        yield request


class IdentityGate(grpc.ServerInterceptor):
    """Checks every call against an ``IdentityPolicy``; passes everything while it has none
    (plaintext or TLS without client certificates)."""

    def __init__(self) -> None:
        self.policy: IdentityPolicy | None = None

    def activate(self, policy: IdentityPolicy) -> None:
        self.policy = policy

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        policy = self.policy
        method = handler_call_details.method
        if handler is None or policy is None:
            return handler
        rule = policy.rule(method)
        if rule is None:
            return handler

        def admitted(context) -> Caller:
            try:
                return policy.admit(method, rule, caller_of(context))
            except PermissionDenied as exc:
                _denied(context, exc)
                raise  # not reached: abort raises

        def checked_one(caller: Caller, request, context) -> None:
            if rule.claim is not None and hasattr(request, "DESCRIPTOR"):
                try:
                    rule.claim(caller, request)
                except PermissionDenied as exc:
                    _denied(context, exc)

        def stream_in(requests, caller: Caller):
            return requests if rule.claim is None else _claimed(requests, caller, rule.claim)

        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            inner_ss = handler.stream_stream

            def stream_stream(requests, context):
                caller = admitted(context)
                try:
                    yield from inner_ss(stream_in(requests, caller), context)
                except PermissionDenied as exc:  # a handler without map_errors
                    _denied(context, exc)

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
        if handler.request_streaming:
            inner_su = handler.stream_unary

            def stream_unary(requests, context):
                caller = admitted(context)
                try:
                    return inner_su(stream_in(requests, caller), context)
                except PermissionDenied as exc:
                    _denied(context, exc)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
        if handler.response_streaming:
            inner_us = handler.unary_stream

            def unary_stream(request, context):
                checked_one(admitted(context), request, context)
                yield from inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
        inner_uu = handler.unary_unary

        def unary_unary(request, context):
            checked_one(admitted(context), request, context)
            return inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)

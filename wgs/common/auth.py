"""Who may call what: the stack secret, the tokens derived from it, and the one role table.

The model (docs/security.md):

- A stack has one **secret**: random, created by `wgs up` in <state>/auth/secret (0600), or given as
  a file (WGS_AUTH_SECRET_FILE, e.g. a mounted Kubernetes Secret). Whoever can read it is the
  stack's owner and can mint any token.
- A **token** is derived from the secret: `wgs1.<payload>.<mac>`, payload = base64url of the scope
  (`client`, `supervisor`, `agent:<chat>:<run>`, optionally `;exp=<unix seconds>`), mac =
  base64url HMAC-SHA256 over `wgs1.<payload>` with a key derived from the secret. Nothing is stored
  per token; rotating the secret revokes every token.
- Calls carry the token as metadata `authorization: Bearer <token>`. The server maps it to an
  `Identity` and checks `CALLS[<full method name>]`; a method not in the table is denied to all
  (fail closed). Health and reflection are open (probes).
- An agent's token is valid only for its own chat (the request's `chat_id`; for the reports that
  name a run, its `run_number` too) and, on the graph, only while its run lives (the graph checks
  the chat's runtime record: services/graph/authz.py).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from wgs.common import logs, paths
from wgs.common import validation as v
from wgs.common.errors import ConfigError, PermissionDenied, Unauthenticated
from wgs.common.logs import fields
from wgs.common.settings import env_str
from wgs.v1 import task_pb2

log = logging.getLogger("wgs.auth")

CLIENT = "client"
SUPERVISOR = "supervisor"
AGENT = "agent"
ROLES = (CLIENT, SUPERVISOR, AGENT)

AUTH_VAR = "WGS_AUTH"
SECRET_FILE_VAR = "WGS_AUTH_SECRET_FILE"
TOKEN_VAR = "WGS_TOKEN"
TOKEN_FILE_VAR = "WGS_TOKEN_FILE"
# Variables an agent must not inherit from the supervisor (it gets its own WGS_TOKEN at spawn).
NOT_FOR_AGENTS = frozenset({SECRET_FILE_VAR, TOKEN_FILE_VAR})

METADATA_KEY = "authorization"
SCHEME = "Bearer"
TOKEN_PREFIX = "wgs1"
MIN_SECRET_BYTES = 32
SECRET_BYTES = 32
_KEY_LABEL = b"wgs token signing key v1"


# ---------------------------------------------------------------------------------------------
# identities and tokens


@dataclass(frozen=True)
class Identity:
    """Who a valid token speaks for."""

    role: str
    chat_id: str = ""  # agents only
    run: int = 0  # agents only: the run number the token was minted for
    expires_at: int | None = None  # unix seconds, if the token has an expiry

    def scope(self) -> str:
        if self.role == AGENT:
            return f"{AGENT}:{self.chat_id}:{self.run}"
        return self.role

    def describe(self) -> str:
        if self.role == AGENT:
            return f"agent of {self.chat_id} run #{self.run}"
        return self.role


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signing_key(secret: bytes) -> bytes:
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


def _mac(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(_signing_key(secret), signed.encode("ascii"), hashlib.sha256).digest())


def mint_token(secret: bytes, identity: Identity) -> str:
    """A token for `identity`, signed with the stack secret."""
    if identity.role not in ROLES:
        raise ValueError(f"unknown role {identity.role!r}; roles are {', '.join(ROLES)}")
    if identity.role == AGENT:
        v.chat_id(identity.chat_id)
        if identity.run < 1:
            raise ValueError(f"run number must be >= 1, got {identity.run}")
    payload = identity.scope()
    if identity.expires_at is not None:
        payload += f";exp={int(identity.expires_at)}"
    signed = f"{TOKEN_PREFIX}.{_b64(payload.encode('ascii'))}"
    return f"{signed}.{_mac(secret, signed)}"


def mint_agent_token(secret: bytes, chat_id: str, run_number: int) -> str:
    """The token the supervisor puts in an agent's environment (WGS_TOKEN) when it spawns run
    `run_number` of `chat_id`: valid for that chat only, and only while that run lives."""
    return mint_token(secret, Identity(AGENT, chat_id=chat_id, run=run_number))


def mint_client_token(secret: bytes, ttl_seconds: float | None = None) -> str:
    expires = int(time.time() + ttl_seconds) if ttl_seconds else None
    return mint_token(secret, Identity(CLIENT, expires_at=expires))


def mint_supervisor_token(secret: bytes) -> str:
    return mint_token(secret, Identity(SUPERVISOR))


def verify_token(secret: bytes, token: str, now: float | None = None) -> Identity:
    """The identity a token speaks for; Unauthenticated if it is malformed, forged or expired."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise Unauthenticated("the bearer token is not a wgs token (expected wgs1.<payload>.<mac>)")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        expected = _mac(secret, signed)
    except UnicodeEncodeError:
        raise Unauthenticated("the bearer token is not a wgs token") from None
    if not hmac.compare_digest(expected.encode("ascii"), parts[2].encode("ascii", "replace")):
        raise Unauthenticated("the bearer token was not issued by this stack (wrong or rotated secret?); "
                              "get a new one with `wgs token create`")
    try:
        payload = _unb64(parts[1]).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise Unauthenticated("the bearer token's payload is not readable") from None
    scope, _, rest = payload.partition(";")
    expires_at: int | None = None
    if rest:
        key, _, value = rest.partition("=")
        if key != "exp" or not value.isdigit():
            raise Unauthenticated("the bearer token's payload is not readable")
        expires_at = int(value)
        if (now if now is not None else time.time()) >= expires_at:
            raise Unauthenticated("the bearer token has expired; get a new one with `wgs token create`")
    role, _, who = scope.partition(":")
    if role in (CLIENT, SUPERVISOR) and not who:
        return Identity(role, expires_at=expires_at)
    if role == AGENT:
        chat, _, run = who.rpartition(":")
        if v.is_chat_id(chat) and run.isdigit() and int(run) >= 1:
            return Identity(AGENT, chat_id=chat, run=int(run), expires_at=expires_at)
    raise Unauthenticated("the bearer token's scope is not known")


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer …` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() != METADATA_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == SCHEME.lower() and token.strip():
            return token.strip()
        return ""
    return None


def redact_tokens(text: str) -> str:
    """Replace anything shaped like a wgs token by `wgs1.***` (logs do it on every line; the
    supervisor does it for stderr tails)."""
    return logs.redact(text)


# ---------------------------------------------------------------------------------------------
# the stack secret


def stack_secret_path(state_dir: Path) -> Path:
    return state_dir / "auth" / "secret"


def ensure_stack_secret(state_dir: Path) -> Path:
    """The stack's secret file, created if missing: WGS_AUTH_SECRET_FILE if set (it must exist),
    else <state>/auth/secret (random, 0600 in a 0700 directory; tightened if an older one is wider).
    Called by `wgs up` before it starts the services, and by `wgs token init`."""
    given = env_str(SECRET_FILE_VAR, "")
    if given:
        path = Path(given).expanduser()
        read_secret(path)  # fails with a ConfigError naming the variable if unusable
        return path
    path = stack_secret_path(state_dir)
    paths.private_dir(path.parent)
    if path.exists():
        paths.tighten(path)
        read_secret(path)
        return path
    try:
        paths.write_private(path, secrets.token_hex(SECRET_BYTES).encode("ascii") + b"\n", exclusive=True)
        log.info("created the stack secret %s", path, extra=fields(path=str(path)))
    except FileExistsError:  # another `wgs up` won the race: use its secret
        pass
    return path


def read_secret(path: Path) -> bytes:
    """The secret bytes of a secret file (surrounding whitespace removed); ConfigError if unusable."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"stack secret file {path} does not exist ({SECRET_FILE_VAR} or <state>/auth/secret)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the stack secret file {path}: {exc.strerror}") from None
    if len(data) < MIN_SECRET_BYTES:
        raise ConfigError(f"stack secret file {path} holds {len(data)} bytes; use at least {MIN_SECRET_BYTES} "
                          "random characters (e.g. `openssl rand -hex 32`)")
    return data


def find_secret_file(state_dir: Path) -> Path | None:
    """Where this process's stack secret is: WGS_AUTH_SECRET_FILE, else <state>/auth/secret if it exists."""
    given = env_str(SECRET_FILE_VAR, "")
    if given:
        return Path(given).expanduser()
    path = stack_secret_path(state_dir)
    return path if path.exists() else None


@functools.cache
def _cached_secret(path: Path) -> bytes:
    return read_secret(path)


def stack_secret(state_dir: Path) -> bytes | None:
    """This process's stack secret (read once), or None when WGS_AUTH=off. For the supervisor,
    which mints each agent run's token (`mint_agent_token`) at spawn. ConfigError if missing."""
    if auth_disabled():
        return None
    path = find_secret_file(state_dir)
    if path is None:
        raise ConfigError(f"no stack secret for {state_dir} ({SECRET_FILE_VAR} is not set)")
    return _cached_secret(path)


def auth_disabled() -> bool:
    value = env_str(AUTH_VAR, "on").strip().lower()
    if value in ("off", "0", "false", "no"):
        return True
    if value in ("on", "1", "true", "yes"):
        return False
    raise ConfigError(f"{AUTH_VAR}={value!r} must be on or off")


@dataclass(frozen=True)
class ServerAuth:
    """A service's authentication settings: the secret, or None when WGS_AUTH=off."""

    secret: bytes | None
    source: str

    @classmethod
    def from_env(cls, state_dir: Path) -> ServerAuth:
        """Refuses (ConfigError) to run without a secret unless WGS_AUTH=off is explicit."""
        if auth_disabled():
            return cls(None, f"{AUTH_VAR}=off")
        path = find_secret_file(state_dir)
        if path is None:
            raise ConfigError(
                f"no stack secret: {stack_secret_path(state_dir)} does not exist and {SECRET_FILE_VAR} is not set. "
                f"Start the stack with `wgs up` (it creates the secret), run `wgs token init`, set {SECRET_FILE_VAR} "
                f"to a file of at least {MIN_SECRET_BYTES} random characters, or set {AUTH_VAR}=off for an "
                "unauthenticated local experiment")
        secret = read_secret(path)
        _check_secret_mode(path, state_dir)
        return cls(secret, str(path))

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Identity | None:
        """The caller's identity (None when authentication is off); Unauthenticated if it has none."""
        if self.secret is None:
            return None
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("no credentials: send `authorization: Bearer <token>` metadata "
                                  "(a token from `wgs token create`, or WGS_TOKEN)")
        if not token:
            raise Unauthenticated("the authorization metadata is not `Bearer <token>`")
        return verify_token(self.secret, token)


def _check_secret_mode(path: Path, state_dir: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if path == stack_secret_path(state_dir):
        if mode & 0o077:
            paths.tighten(path)
    elif mode & 0o007:  # e.g. a read-only Kubernetes Secret volume (group = fsGroup is fine): say so
        log.warning("stack secret file %s is readable by every user (mode %o); make it 0600, 0440 or 0400 "
                    "(Kubernetes: defaultMode on the Secret volume)", path, mode, extra=fields(path=str(path)))


# ---------------------------------------------------------------------------------------------
# client side: which token a process presents


def env_token() -> str | None:
    """WGS_TOKEN, else the contents of WGS_TOKEN_FILE, else None."""
    token = os.environ.get(TOKEN_VAR, "").strip()
    if token:
        return token
    file = os.environ.get(TOKEN_FILE_VAR, "").strip()
    if file:
        try:
            token = Path(file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{TOKEN_FILE_VAR}={file}: cannot read it: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"{TOKEN_FILE_VAR}={file} is empty")
        return token
    return None


def operator_token(state_dir: Path, role: str = CLIENT) -> str | None:
    """The token a command-line user presents for `role`.

    client: WGS_TOKEN / WGS_TOKEN_FILE, else one minted from the stack secret if this user can read
    it (the stack's owner), else None. supervisor (`wgs up`/`wgs down` listing the agents to stop):
    the secret first, since a user's WGS_TOKEN is usually a client token."""
    token = env_token() if role == CLIENT else None
    if token:
        return token
    path = find_secret_file(state_dir)
    if path is not None:
        try:
            return mint_token(read_secret(path), Identity(role))
        except ConfigError:
            pass
    return env_token()


# ---------------------------------------------------------------------------------------------
# the role table


AgentCheck = Callable[[Message], "str | None"]


@dataclass(frozen=True)
class AgentAccess:
    """An agent may make the call for its own chat: the request's `chat_field` must be the chat its
    token was minted for, its `run_field` (if any: requests that name a run) the run it was minted
    for, its run must be live (checked by the service), and `check` (if any) returns a reason to
    refuse or None."""

    chat_field: str = "chat_id"
    check: AgentCheck | None = None
    what: str = "its own chat"
    run_field: str = ""


@dataclass(frozen=True)
class Access:
    roles: frozenset[str] = frozenset()
    agent: AgentAccess | None = None
    open: bool = False

    def allowed_roles(self) -> str:
        names = sorted(self.roles) + ([f"agent ({self.agent.what})"] if self.agent else [])
        return ", ".join(names) or "nobody"


def allow(*roles: str, agent: AgentAccess | None = None) -> Access:
    return Access(frozenset(roles), agent)


OPEN = Access(open=True)
# Standard services every server adds, open to anyone (probes, grpcurl).
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")

_AGENT_MESSAGE_ROLES = (task_pb2.MESSAGE_ROLE_ASSISTANT, task_pb2.MESSAGE_ROLE_SYSTEM_ERROR)


def _agent_reply_roles(request: Message) -> str | None:
    if getattr(request, "role", None) in _AGENT_MESSAGE_ROLES:
        return None
    return "agents may append only ASSISTANT or SYSTEM_ERROR messages"


OWN_CHAT = AgentAccess()
OWN_CHAT_REPLIES = AgentAccess(check=_agent_reply_roles, what="its own chat; ASSISTANT/SYSTEM_ERROR messages")
OWN_RUN = AgentAccess(run_field="run_number", what="its own chat and run")

CLIENTS = allow(CLIENT, SUPERVISOR)
SUPERVISOR_ONLY = allow(SUPERVISOR)

# Full gRPC method name → who may call it. ONE table for every service; a method missing here is
# denied to everyone (tests/security/test_units.py checks that every method of every service has an
# entry, and that every entry names an existing method).
#
# Clients get the chat API and the read side of the graph; each graph write a client could once make
# is decided in docs/security.md ("Why clients may not write to the graph"): tasks and messages are
# written by the supervisor (for the chat API) and by agents (their replies); StopAgents is the stack
# owner's (`wgs down` and the keeper present a supervisor token derived from the secret). Reconcile
# stays open to clients (`wgs sweep`): it only resets tasks whose owner is proven gone.
CALLS: dict[str, Access] = {
    # ChatService (supervisor): clients; supervisors forward calls to each other.
    "/wgs.v1.ChatService/CreateChat": CLIENTS,
    "/wgs.v1.ChatService/GetChat": CLIENTS,
    "/wgs.v1.ChatService/ListChats": CLIENTS,
    "/wgs.v1.ChatService/SendMessage": CLIENTS,
    "/wgs.v1.ChatService/ListChatMessages": CLIENTS,
    "/wgs.v1.ChatService/WatchChatMessages": CLIENTS,
    "/wgs.v1.ChatService/StopChat": CLIENTS,
    "/wgs.v1.ChatService/DeleteChat": CLIENTS,
    "/wgs.v1.ChatService/ArchiveChat": CLIENTS,
    "/wgs.v1.ChatService/InterruptChat": CLIENTS,
    "/wgs.v1.ChatService/RestartChat": CLIENTS,
    "/wgs.v1.ChatService/WatchChat": CLIENTS,
    "/wgs.v1.ChatService/StreamChatLog": CLIENTS,
    # SupervisorService (supervisor): `wgs status` reads the replicas; stopping every agent is for the
    # stack owner (`wgs down`, the keeper: a supervisor token) and replicas.
    "/wgs.v1.SupervisorService/StopAgents": SUPERVISOR_ONLY,
    "/wgs.v1.SupervisorService/ListReplicas": CLIENTS,
    # GraphService (graph): clients read; only the supervisor writes tasks (chat tasks change state
    # through the chat API, which keeps the runtime record in step).
    "/wgs.v1.GraphService/CreateTask": SUPERVISOR_ONLY,
    "/wgs.v1.GraphService/GetTask": CLIENTS,
    "/wgs.v1.GraphService/ListTasks": CLIENTS,
    "/wgs.v1.GraphService/UpdateTask": SUPERVISOR_ONLY,
    "/wgs.v1.GraphService/AppendTaskLog": SUPERVISOR_ONLY,
    "/wgs.v1.GraphService/Reconcile": CLIENTS,
    "/wgs.v1.GraphService/ListMessages": allow(CLIENT, SUPERVISOR, agent=OWN_CHAT),
    "/wgs.v1.GraphService/WatchMessages": allow(CLIENT, SUPERVISOR, agent=OWN_CHAT),
    # A user's message goes through ChatService.SendMessage (the supervisor stores it and wakes or
    # respawns the agent); replies are the agent's own. Clients append nothing here.
    "/wgs.v1.GraphService/AppendMessage": allow(SUPERVISOR, agent=OWN_CHAT_REPLIES),
    # What a live agent reports about its own chat (its run only: checked again by the store).
    "/wgs.v1.GraphService/ReportAgentStatus": allow(SUPERVISOR, agent=OWN_RUN),
    "/wgs.v1.GraphService/PublishPartialMessage": allow(SUPERVISOR, agent=OWN_RUN),
    # RuntimeService (graph): the chat records only supervisors keep.
    "/wgs.v1.RuntimeService/CreateChatTask": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/GetChatRecord": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/ListChatRecords": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/RecordRunStarted": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/RecordRunExited": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/TransitionChat": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/RenewLeases": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/ClaimChat": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/ListSupervisors": SUPERVISOR_ONLY,
    "/wgs.v1.RuntimeService/WatchChatRecords": SUPERVISOR_ONLY,
    # DispatchService (dispatch).
    "/wgs.v1.DispatchService/PlanSpawn": SUPERVISOR_ONLY,
}


def access_for(method: str) -> Access | None:
    """The rule for a full method name ("/pkg.Service/Method"); None = not in the table (denied)."""
    rule = CALLS.get(method)
    if rule is not None:
        return rule
    service = method.lstrip("/").partition("/")[0]
    return OPEN if service in OPEN_SERVICES else None


def deny_message(who: Identity, method: str, rule: Access | None, why: str = "") -> str:
    if rule is None:
        return f"{who.describe()} may not call {method}: the method is not in the access table"
    reason = f": {why}" if why else f" (allowed: {rule.allowed_roles()})"
    return f"{who.describe()} may not call {method}{reason}"


def check_role(method: str, who: Identity | None) -> Access | None:
    """First step, before the request is read: may this identity call `method` at all?

    Returns the rule when the call may proceed (for an agent, the rule's `agent` part still has to
    be checked against the request with `check_agent_request`); PermissionDenied otherwise.
    `who` None means authentication is off: everything is allowed."""
    rule = access_for(method)
    if who is None:
        return rule
    if rule is not None and (rule.open or who.role in rule.roles):
        return rule
    if rule is not None and who.role == AGENT and rule.agent is not None:
        return rule
    raise PermissionDenied(deny_message(who, method, rule))


def check_agent_request(method: str, who: Identity, rule: Access, request: Message) -> None:
    """Second step for agents: the request must name the agent's own chat and pass the rule's check."""
    agent = rule.agent
    if agent is None:  # pragma: no cover - check_role only lets agents through with an agent rule
        raise PermissionDenied(deny_message(who, method, rule))
    chat = getattr(request, agent.chat_field, "")
    if chat != who.chat_id:
        shown = v.show(chat) if isinstance(chat, str) else "?"
        raise PermissionDenied(deny_message(who, method, rule, f"agents may call it only for their own chat, not {shown}"))
    if agent.run_field:
        run = getattr(request, agent.run_field, 0)
        if run != who.run:
            raise PermissionDenied(deny_message(who, method, rule, f"agents may call it only for their own run, "
                                                                   f"not run {run}"))
    if agent.check is not None:
        why = agent.check(request)
        if why:
            raise PermissionDenied(deny_message(who, method, rule, why))

"""OPC UA source configuration: what `opcua:` under a machine in the plant file means.

Config models and pure lookups only (no I/O); the collector is collectors/opcua.py.

```yaml
- id: IM-03
  name: {en: Press 3, zh: 3号注塑机}
  opcua:
    endpoint: opc.tcp://10.10.1.13:4840
    security: {policy: Basic256Sha256, mode: SignAndEncrypt,
               certificate: /etc/mesflow/opcua/mesflow.der, private_key: /etc/mesflow/opcua/mesflow.pem,
               server_certificate: /etc/mesflow/opcua/im03.der}
    user: mes
    password_env: MESFLOW_OPCUA_IM03_PASSWORD
    namespaces: {imm: "http://opcfoundation.org/UA/PlasticsRubber/IMM2MES/"}
    state: {path: "imm:IMM_MES_Interface/imm:MachineStatus/imm:MachineMode",
            mapping: euromap77_machine_mode}
    total: {node: "ns=2;s=IM03.Counters.Total"}
    process_values:
      cycle_time_s: {node: "ns=2;s=IM03.CycleTime"}
```
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesflow.events import MAX_PROCESS_VALUES, PROCESS_VALUE_NAME, MachineState

if TYPE_CHECKING:
    from mesflow.plant import Machine, PlantConfig

# Ready-made state tables for the companion specifications. They live here, in code, rather
# than in every plant file: the enumerations are fixed by the specs, a plant should not have
# to copy (and mistype) them, and a test pins them. A plant `state_mappings` entry of the same
# name replaces the built-in one, so a plant that judges, say, MANUAL differently can.
BUILTIN_STATE_MAPPINGS: dict[str, dict[str, MachineState]] = {
    # OPC 40001-1 MachineryItemState: the state machine's CurrentState (LocalizedText).
    # Annex C's ISO 22400 reading: Executing is production time, NotExecuting a stop,
    # OutOfService a failure/maintenance stop; NotAvailable is switched off or unreachable.
    "opc40001_machinery_item_state": {
        "Executing": "running",
        "NotExecuting": "idle",
        "OutOfService": "down",
        "NotAvailable": "offline",
    },
    # OPC 40083 (EUROMAP 83) MachineModeEnumeration, EUROMAP 77 MachineStatus/MachineMode.
    # The mode selector says how the press may run, not that it cycles: MANUAL and SETUP are
    # setup work, SLEEP the energy-saving pause the plant chose, OTHER is taken as idle.
    "euromap77_machine_mode": {
        "0": "idle",  # OTHER
        "1": "running",  # AUTOMATIC
        "2": "running",  # SEMI_AUTOMATIC
        "3": "setup",  # MANUAL
        "4": "setup",  # SETUP
        "5": "planned_stop",  # SLEEP
        "OTHER": "idle",
        "AUTOMATIC": "running",
        "SEMI_AUTOMATIC": "running",
        "MANUAL": "setup",
        "SETUP": "setup",
        "SLEEP": "planned_stop",
    },
    # OPC 40083 ProductionStatusEnumeration (EUROMAP 77 ActiveJobValues/ProductionStatus).
    # START_UP and DRY_RUN cycle without making good parts: setup, not running.
    "euromap77_production_status": {
        "0": "idle",  # OTHER
        "1": "idle",  # NO_PRODUCTION
        "2": "setup",  # START_UP
        "3": "idle",  # READY_FOR_PRODUCTION
        "4": "running",  # PRODUCTION
        "5": "setup",  # DRY_RUN
        "OTHER": "idle",
        "NO_PRODUCTION": "idle",
        "START_UP": "setup",
        "READY_FOR_PRODUCTION": "idle",
        "PRODUCTION": "running",
        "DRY_RUN": "setup",
    },
}

# A node id as asyncua reads it ("ns=2;s=Press.State", "i=2258", "nsu=<uri>;s=X").
_NODE_ID = re.compile(r"^(?:(?:ns=\d+|nsu=[^;]+);)?[isgb]=.+$", re.DOTALL)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeRef(_Model):
    """One node: by `node` id, or by browse `path` from the Objects folder.

    A path is `/`-separated browse names, each `<ns>:<Name>` where `<ns>` is a namespace
    index or an alias from `namespaces` (indexes can change when a server is updated; URIs
    cannot), or a bare `<Name>` in namespace 0.
    """

    node: str | None = Field(default=None, min_length=1)
    path: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> NodeRef:
        if (self.node is None) == (self.path is None):
            raise ValueError("give either 'node' (a node id) or 'path' (a browse path)")
        if self.node is not None and not _NODE_ID.fullmatch(self.node):
            raise ValueError(
                f"node {self.node!r} is not an OPC UA node id (e.g. 'ns=2;s=Press.State', 'i=2258')"
            )
        if self.path is not None and any(not p for p in self.path.strip("/").split("/")):
            raise ValueError(f"browse path {self.path!r} has an empty element")
        return self

    def label(self) -> str:
        return self.node if self.node is not None else f"path {self.path}"


class StateNode(NodeRef):
    # Name of a table in the plant's `state_mappings` or of a built-in one
    # (BUILTIN_STATE_MAPPINGS); default: the machine's own `state_mapping`.
    mapping: str | None = None


class Security(_Model):
    """Message security. Certificates are DER or PEM files; the private key a PEM file."""

    policy: Literal["None", "Basic256Sha256"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    certificate: str | None = None
    private_key: str | None = None
    # The server's certificate; without it the one the server presents is taken (asyncua
    # reads it from the endpoint description), which trusts the first server that answers.
    server_certificate: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Security:
        if (self.policy == "None") != (self.mode == "None"):
            raise ValueError(
                "policy None goes with mode None, Basic256Sha256 with Sign or SignAndEncrypt"
            )
        if self.policy != "None" and not (self.certificate and self.private_key):
            raise ValueError(f"{self.policy} needs 'certificate' and 'private_key' (the client's)")
        return self


class OpcUaSource(_Model):
    """How the collector reads one machine over OPC UA."""

    endpoint: str = Field(pattern=r"^opc\.tcp://[^\s/@]+(?::\d+)?(?:/.*)?$")
    security: Security = Security()
    user: str | None = Field(default=None, min_length=1)
    # The password is never in the plant file: only the name of the environment variable.
    password_env: str | None = Field(default=None, pattern=_ENV_NAME.pattern)
    namespaces: dict[str, str] = {}
    state: StateNode | None = None
    total: NodeRef | None = None
    scrap: NodeRef | None = None
    process_values: dict[str, NodeRef] = Field(default={}, max_length=MAX_PROCESS_VALUES)
    # Per monitored item: how often the server samples (ms), and how many samples it keeps
    # between two publishes (asyncua's server reads 0 as 10 000: always ask explicitly).
    sampling_interval_ms: float = Field(default=500, ge=0, le=3_600_000)
    queue_size: int = Field(default=10, ge=1, le=10_000)
    # Per subscription: how often the server sends, and after how many empty intervals it
    # sends a keep-alive anyway (asyncua's default derives ~45 min from the session timeout).
    publishing_interval_ms: float = Field(default=1000, gt=0, le=3_600_000)
    keep_alive_count: int = Field(default=10, ge=1, le=10_000)
    lifetime_count: int = Field(default=60, ge=3, le=100_000)

    @model_validator(mode="after")
    def _checks(self) -> OpcUaSource:
        if self.password_env and not self.user:
            raise ValueError("password_env is given but no user")
        for name in self.process_values:
            if not re.fullmatch(PROCESS_VALUE_NAME, name):
                raise ValueError(
                    f"process value name {name!r}: lower-case letters, digits, '_' and '.', "
                    "starting with a letter (e.g. cycle_time_s)"
                )
        for alias in self.namespaces:
            if not alias or ":" in alias or "/" in alias or alias.isdigit():
                raise ValueError(
                    f"namespace alias {alias!r} may not be empty, a number or hold ':' '/'"
                )
        if self.lifetime_count < 3 * self.keep_alive_count:
            raise ValueError("lifetime_count must be at least 3 x keep_alive_count (OPC UA Part 4)")
        if not (self.state or self.total or self.scrap or self.process_values):
            raise ValueError("name at least one node: state, total, scrap or process_values")
        return self

    def nodes(self) -> list[tuple[str, str, NodeRef]]:
        """(role, name, node) of every node to subscribe; role is state|counter|process_value."""
        out: list[tuple[str, str, NodeRef]] = []
        if self.state is not None:
            out.append(("state", "state", self.state))
        if self.total is not None:
            out.append(("counter", "total", self.total))
        if self.scrap is not None:
            out.append(("counter", "scrap", self.scrap))
        out.extend(("process_value", name, ref) for name, ref in self.process_values.items())
        return out


def state_table(plant: PlantConfig, machine: Machine) -> dict[str, MachineState] | None:
    """The native code -> canonical state table for `machine`'s OPC UA state node.

    None when the machine has no state node or no mapping (then it must send canonical
    names). Raises ValueError naming the machine when the mapping is unknown.
    """
    source = machine.opcua
    if source is None or source.state is None:
        return None
    name = source.state.mapping or machine.state_mapping
    if name is None:
        return None
    if name in plant.state_mappings:
        return dict(plant.state_mappings[name])
    if name in BUILTIN_STATE_MAPPINGS:
        return BUILTIN_STATE_MAPPINGS[name]
    known = sorted(set(plant.state_mappings) | set(BUILTIN_STATE_MAPPINGS))
    raise ValueError(
        f"machine {machine.id!r}: opcua state mapping {name!r} is neither under state_mappings "
        f"nor built in (known: {', '.join(known)})"
    )

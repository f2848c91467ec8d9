"""The write path: resources put with their versions, search tokens and identifier claims, each write noted for the
transaction's AuditEvent. Reads and searches: `gateway.platform.store.repo` (which also offers these names)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import structlog
from sqlalchemy import Connection, Table, Update, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from common.datetimes import parse_source_datetime, to_fhir_instant
from fhir_mapping.patients import merge_patient
from gateway.platform.store.deferred import defer
from gateway.platform.store.jsontext import dumps
from gateway.platform.store.keys import identifier_key
from gateway.platform.store.models import KEPT_VERSIONS, Base, IdentifierRow, ResourceRow, ResourceVersionRow, TokenRow

log = structlog.get_logger("iap.store")


def _dumps(resource: dict[str, Any]) -> str:
    return dumps(resource, sort_keys=True)


def put_resource(session: Session, resource: dict[str, Any], now: datetime, service_id: str | None = None) -> tuple[dict[str, Any], str]:
    """Create or update (`resource` has its stable id); returns (stored resource, "created"|"updated"|"unchanged").

    Same content as stored -> unchanged (same version); otherwise version + 1.

    Locks the row on PostgreSQL so two writers cannot both take the same next version.
    """
    return put_resources(session, [(resource, service_id)], now)[0]


@dataclass(frozen=True)
class FirstVersion:
    """A resource's first stored version (its JSON and its row's columns), worked out before its transaction.

    `put_resources` uses it when the transaction finds no stored row for the resource and is given the
    very object it was made from; otherwise it works the version out itself, as usual. So the JSON
    encoding and the search columns of a new resource are done outside the transaction (outside the
    SQLite writer lock, bench/README.md), and nothing changes about what is stored.
    """

    resource: dict[str, Any]
    full: dict[str, Any]
    row: dict[str, Any]


def first_versions(writes: Sequence[tuple[dict[str, Any], str | None]], now: datetime) -> dict[tuple[str, str], FirstVersion]:
    """The first version of each resource in `writes`, as `put_resources(..., first=...)` takes them (no database)."""
    out: dict[tuple[str, str], FirstVersion] = {}
    for resource, service_id in writes:
        key = (resource["resourceType"], resource["id"])
        if key not in out:  # given twice: the second write is an update, worked out in the transaction
            full, row = _version(resource, {k: v for k, v in resource.items() if k != "meta"}, 1, now, service_id)
            out[key] = FirstVersion(resource, full, row)
    return out


def _version(
    resource: dict[str, Any], body: dict[str, Any], version: int, now: datetime, service_id: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resource as stored at `version` (meta.versionId and lastUpdated set), and its row's columns."""
    rtype, rid = resource["resourceType"], resource["id"]
    meta = dict(resource.get("meta") or {})
    meta.update(versionId=str(version), lastUpdated=to_fhir_instant(now))
    full = {"resourceType": rtype, "id": rid, "meta": meta, **{k: v for k, v in body.items() if k not in ("resourceType", "id")}}
    return full, {"version_id": version, "last_updated": now, "content": _dumps(full), **_index(full, service_id)}


# (stored version, write) -> what to store instead: how a write combines with what is there (put_resources)
Merge = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def put_resources(
    session: Session,
    writes: Sequence[tuple[dict[str, Any], str | None]],
    now: datetime,
    first: dict[tuple[str, str], FirstVersion] | None = None,
    merge: Merge | None = None,
) -> list[tuple[dict[str, Any], str]]:
    """`put_resource` for several (resource, service id) pairs, in order, as if one after the other.

    One locking read of the rows they touch, one insert of the new ones, one read and one insert of
    identifier rows, instead of four or five ORM statements per resource: a referral writes seven
    resources, and those statements were most of an ingest's time (bench/README.md). A resource
    given twice is written twice (created, then updated), as one-by-one calls would. `first`: new
    resources' first versions made ahead (`first_versions`), used where they still apply. `merge`:
    how a write combines with the version stored (the locked row), e.g. CAS-08 for a re-sent referral's
    Task; it may raise to refuse the write.
    """
    if not writes:
        return []
    session.flush()  # ORM changes made earlier in this transaction reach the database before the reads below
    # plain statements on the session's connection: no ORM objects, no unit of work (a third of the time they took)
    connection = session.connection()
    writes = _with_owners(connection, writes)
    keys = {(r["resourceType"], r["id"]) for r, _ in writes}
    found = connection.execute(_ROWS_FOR_UPDATE, _in_lists(("types", "ids"), keys))
    current = {key: (version, content) for rtype, rid, version, content in found if (key := (rtype, rid)) in keys}
    inserts: dict[tuple[str, str], dict[str, Any]] = {}  # new rows, each inserted once at its last version
    updates: dict[tuple[str, str], dict[str, Any]] = {}
    out: list[tuple[dict[str, Any], str]] = []
    written: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []  # every version written, in resource_versions
    for resource, service_id in writes:
        key = rtype, rid = resource["resourceType"], resource["id"]
        prior = current.get(key)
        made = (first or {}).get(key) if prior is None else None
        if made is not None and made.resource is resource:
            full, row = made.full, made.row if service_id is None else made.row | {"service_id": service_id}
        else:
            stored = json.loads(prior[1]) if prior is not None else None
            if stored is not None and merge is not None:
                resource = merge(stored, resource)
            body = {k: v for k, v in resource.items() if k != "meta"}
            if stored is not None:
                if {k: v for k, v in stored.items() if k != "meta"} == body:
                    out.append((stored, "unchanged"))
                    continue
            full, row = _version(resource, body, prior[0] + 1 if prior else 1, now, service_id)
        if key in inserts or prior is None:
            inserts[key] = inserts.get(key, {"resource_type": rtype, "id": rid, "service_id": None}) | row
        else:
            updates[key] = updates.get(key, {}) | row
        current[key] = (row["version_id"], row["content"])
        note_write(session, f"{rtype}/{rid}", prior is None, row.get("subject_id"))
        written.append(full)
        if rtype in KEPT_VERSIONS:  # vread and _history (gateway.platform.store.history)
            versions.append(
                {"resource_type": rtype, "id": rid, "version_id": row["version_id"], "last_updated": now, "content": row["content"]}
            )
        out.append((full, "updated" if prior else "created"))
    # the identifiers first: the one statement whose reply is read. The rows and tokens are deferred (on PostgreSQL
    # sent together with the transaction's next statement or its COMMIT, gateway.platform.store.deferred)
    try:
        _put_identifiers(connection, written)
    except IdentifierTaken as taken:
        if taken.resource_type != "Patient" or taken.holder is None or ("Patient", taken.claimant) not in inserts:
            raise
        return _relinked(session, writes, taken.claimant, taken.holder, now, merge)
    defer(connection, _INSERT_ROWS, list(inserts.values()))
    defer(connection, _INSERT_VERSIONS, versions)
    for (rtype, rid), values in updates.items():
        defer(connection, _update_of(tuple(values)), [{"row_type": rtype, "row_id": rid} | {f"new_{k}": v for k, v in values.items()}])
        loaded = session.identity_map.get(identity_key(ResourceRow, (rtype, rid)))
        if loaded is not None:  # a row the session had read is now out of date: reload it on next use
            session.expire(loaded)
    _put_tokens(connection, written, inserts)
    return out


def _with_owners(connection: Connection, writes: Sequence[tuple[dict[str, Any], str | None]]) -> list[tuple[dict[str, Any], str | None]]:
    """A Provenance written with no service belongs to the service of what it records (its first target that has one),
    so a client bound to that service sees the step in `$explain` (gateway.platform.store.visibility). Looked up only for such."""
    if all(service is not None or r["resourceType"] != "Provenance" for r, service in writes):
        return list(writes)
    given = {(r["resourceType"], r["id"]): service for r, service in writes if service is not None}
    out: list[tuple[dict[str, Any], str | None]] = []
    for resource, service_id in writes:
        if service_id is None and resource["resourceType"] == "Provenance":
            for target in resource.get("target", []):
                rtype, _, rid = str(target.get("reference", "")).split("/_history/", 1)[0].partition("/")
                service_id = given.get((rtype, rid)) or connection.execute(_SERVICE_OF, {"type": rtype, "id": rid}).scalar_one_or_none()
                if service_id is not None:
                    break
        out.append((resource, service_id))
    return out


WRITES_KEY = "iap_audit_writes"  # session.info: the resources this transaction wrote, for its AuditEvent (gateway.platform.audit)


def note_write(session: Session, reference: str, created: bool, subject_id: str | None) -> None:
    """Remember that this transaction wrote `reference` ("Task/<id>"), so the AuditEvent committed with it names it.

    The write path uses plain statements, which the ORM's flush events never see; it notes its writes here.
    """
    writes: dict[str, tuple[bool, str | None]] = session.info.setdefault(WRITES_KEY, {})
    writes[reference] = (created or writes.get(reference, (False, None))[0], subject_id)


def table_of(model: type[Base]) -> Table:
    """The model's table, for plain statements (no ORM objects, no unit of work)."""
    return cast(Table, model.__table__)


def _in_lists(names: tuple[str, ...], keys: Collection[tuple[str, ...]]) -> dict[str, list[str]]:
    """Parameters for `a IN :names[0] AND b IN :names[1] ...` that match every key (and maybe other combinations:
    callers keep only their keys). SQLite answers that from the primary key; a row-value IN, (a, b) IN (...),
    makes it scan the table."""
    return {name: sorted({key[i] for key in keys}) for i, name in enumerate(names)}


# The write path's statements, built once (building a statement cost more than running it)
_RESOURCES, _IDENTIFIERS, _TOKENS = table_of(ResourceRow), table_of(IdentifierRow), table_of(TokenRow)
_ROWS_FOR_UPDATE = (
    select(_RESOURCES.c.resource_type, _RESOURCES.c.id, _RESOURCES.c.version_id, _RESOURCES.c.content)
    .where(_RESOURCES.c.resource_type.in_(bindparam("types", expanding=True)), _RESOURCES.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_RESOURCES.c.resource_type, _RESOURCES.c.id)  # PostgreSQL locks in one order: no deadlock between writers
    .with_for_update()
)
_INSERT_ROWS = insert(_RESOURCES)
_INSERT_VERSIONS = insert(table_of(ResourceVersionRow))
_IDENTIFIER_HOLDERS = select(_IDENTIFIERS.c.resource_type, _IDENTIFIERS.c.system, _IDENTIFIERS.c.value, _IDENTIFIERS.c.resource_id).where(
    _IDENTIFIERS.c.resource_type.in_(bindparam("types", expanding=True)),
    _IDENTIFIERS.c.system.in_(bindparam("systems", expanding=True)),
    _IDENTIFIERS.c.value.in_(bindparam("values", expanding=True)),
)
_INSERT_NEW_IDENTIFIERS = {
    dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(_IDENTIFIERS)
    .on_conflict_do_nothing()
    .returning(_IDENTIFIERS.c.resource_type, _IDENTIFIERS.c.system, _IDENTIFIERS.c.value)
    for dialect in (postgresql, sqlite)
}
_DELETE_CLAIMS = delete(_IDENTIFIERS).where(
    _IDENTIFIERS.c.resource_type == bindparam("type"), _IDENTIFIERS.c.resource_id == bindparam("id")
)
_DELETE_TOKENS = delete(_TOKENS).where(_TOKENS.c.resource_type == bindparam("type"), _TOKENS.c.resource_id == bindparam("id"))
_INSERT_TOKENS = insert(_TOKENS)
_SERVICE_OF = select(_RESOURCES.c.service_id).where(_RESOURCES.c.resource_type == bindparam("type"), _RESOURCES.c.id == bindparam("id"))
_UPDATES: dict[tuple[str, ...], Update] = {}


def _update_of(columns: tuple[str, ...]) -> Update:
    """The UPDATE of a resource row setting `columns`, built once per set of columns (an update built per call
    cost more than running it: the cache key of its values is worked out every time)."""
    stmt = _UPDATES.get(columns)
    if stmt is None:
        where = (_RESOURCES.c.resource_type == bindparam("row_type"), _RESOURCES.c.id == bindparam("row_id"))
        values = {name: bindparam(f"new_{name}", type_=_RESOURCES.c[name].type) for name in columns}
        stmt = _UPDATES[columns] = update(_RESOURCES).where(*where).values(values)
    return stmt


def _index(res: dict[str, Any], service_id: str | None) -> dict[str, Any]:
    """The search columns of a resource row (service_id only when given: an update keeps the row's service)."""
    codings = (res.get("businessStatus") or {}).get("coding") or []
    subject = (res.get("for") or res.get("subject") or res.get("patient") or {}).get("reference", "")
    end = ((res.get("restriction") or {}).get("period") or {}).get("end")
    effective = res.get("effectiveDateTime") or res.get("authored") or res.get("recorded")
    columns = {
        "status": res.get("status"),
        "priority": res.get("priority"),
        "business_status": codings[0].get("code") if codings else None,
        "subject_id": subject.split("/", 1)[1] if subject.startswith("Patient/") else None,
        "authored_on": parse_source_datetime(res["authoredOn"]) if res.get("authoredOn") else None,
        "breach_at": parse_source_datetime(end) if end and _is_cas_case(res) else None,
        "effective_at": parse_source_datetime(effective) if isinstance(effective, str) and "T" in effective else None,
    }
    if service_id is not None:
        columns["service_id"] = service_id
    return columns


def case_rule_set(task: dict[str, Any]) -> str | None:
    """The rule file version an open CAS case's colours and safety calls follow (CAS-09, issue 37): the one a person
    applied to it (Task input `rule-set-applied`, `iap-gateway rules apply-to-open`), else the one that last decided
    it (the last `rule-set` input: a re-sent referral adds the version that decided it again, CAS-08)."""
    found: dict[str, str] = {}
    for given in task.get("input") or []:
        code = (((given.get("type") or {}).get("coding") or [{}])[0]).get("code")
        if code in ("rule-set", "rule-set-applied") and isinstance(given.get("valueString"), str):
            found[code] = given["valueString"]
    return found.get("rule-set-applied") or found.get("rule-set")


def _is_cas_case(res: dict[str, Any]) -> bool:
    """Only CAS queue cases have a breach time on the queue (CAS-02); other Tasks' due times are not queue breaches."""
    return any(c.get("code") == "cas-callback" for c in (res.get("code") or {}).get("coding", []))


def _tokens(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(param, system, code) rows for token search: Observation.code, QuestionnaireResponse.questionnaire."""
    if res["resourceType"] == "Observation":
        return [("code", c.get("system", ""), c["code"]) for c in (res.get("code") or {}).get("coding", []) if c.get("code")]
    if res["resourceType"] == "QuestionnaireResponse" and res.get("questionnaire"):
        return [("questionnaire", "", res["questionnaire"].split("|", 1)[0])]
    if res["resourceType"] == "DocumentReference":
        return [("related", "", r["reference"]) for r in (res.get("context") or {}).get("related", []) if r.get("reference")]
    if res["resourceType"] == "Encounter":
        return [("episode-of-care", "", e["reference"]) for e in res.get("episodeOfCare", []) if e.get("reference")]
    if res["resourceType"] == "Task":  # a CN's suitability (CAS-07): the case is allocated (CAS-16)
        rows = [
            ("performer-type", c.get("system", ""), c["code"])
            for t in res.get("performerType", [])
            for c in t.get("coding", [])
            if c.get("code")
        ]
        label = case_rule_set(res) if _is_cas_case(res) else None  # the version its colours follow (CAS-09, issue 37)
        return rows + ([("rule-set", "", label[:255])] if label else [])
    if res["resourceType"] == "Patient" and isinstance(res.get("birthDate"), str) and len(res["birthDate"]) == 10:
        return [("birthdate", "", res["birthDate"])]  # a whole day (YYYY-MM-DD) sorts as text: extremes of age waiting (CAS-16)
    if res["resourceType"] == "Provenance":  # its targets, and the rules it names (the queue summary counts CAS-10 calls)
        reasons = [("reason", c.get("system", ""), c["code"]) for r in res.get("reason", []) for c in r.get("coding", []) if c.get("code")]
        return [("target", "", t["reference"].split("/_history/", 1)[0]) for t in res.get("target", []) if t.get("reference")] + reasons
    return []


def _put_tokens(connection: Connection, written: list[dict[str, Any]], new_rows: Collection[tuple[str, str]]) -> None:
    """Each written resource's token rows replace its old ones (the last write of a resource wins).

    A resource whose row is new has no old token rows (they are written with their resource), so
    nothing is deleted for it: one statement fewer for most messages.
    """
    final = {(res["resourceType"], res["id"]): set(_tokens(res)) for res in written}
    final = {key: rows for key, rows in final.items() if rows}
    if not final:
        return
    replaced = [{"type": rtype, "id": rid} for rtype, rid in sorted(final) if (rtype, rid) not in new_rows]
    defer(connection, _DELETE_TOKENS, replaced)
    defer(
        connection,
        _INSERT_TOKENS,
        [
            {"resource_type": rtype, "resource_id": rid, "param": p, "system": s, "code": c}
            for (rtype, rid), rows in final.items()
            for p, s, c in sorted(rows)
        ],
    )


class IdentifierTaken(ValueError):
    """An identifier a written resource claims is held by another resource of its type (`holder`, when known)."""

    def __init__(self, resource_type: str, system: str, claimant: str, holder: str | None) -> None:
        super().__init__(f"identifier {system} is already used by another {resource_type}")
        self.resource_type, self.claimant, self.holder = resource_type, claimant, holder


def _relinked(
    session: Session, writes: Sequence[tuple[dict[str, Any], str | None]], claimant: str, holder: str, now: datetime, merge: Merge | None
) -> list[tuple[dict[str, Any], str]]:
    """A new Patient whose identifier (an NHS number) an existing Patient holds already is that Patient: e.g. one an EPR
    registered by its local number and later linked to the NHS number (issue 32). The batch is written again with the
    new Patient's id and every reference to it turned to the holder's, the Patient merged into the holder's
    (fhir_mapping.patients.merge_patient: what the holder has from another source is kept). Never two Patients."""
    connection = session.connection()
    connection.execute(_DELETE_CLAIMS, {"type": "Patient", "id": claimant})  # the rows this batch just inserted for it
    noted: dict[str, Any] = session.info.get(WRITES_KEY, {})
    for resource, _ in writes:
        noted.pop(f"{resource['resourceType']}/{resource['id']}", None)
    old, new = f"Patient/{claimant}", f"Patient/{holder}"

    def turned(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (new if k == "reference" and v == old else turned(v)) for k, v in node.items()}
        return [turned(v) for v in node] if isinstance(node, list) else node

    again = [(turned(r) | ({"id": holder} if (r["resourceType"], r["id"]) == ("Patient", claimant) else {}), s) for r, s in writes]

    def merged(stored: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
        if resource["resourceType"] == "Patient" and resource["id"] == holder:
            return merge_patient(stored, resource) if merge is None else merge(stored, resource)
        return merge(stored, resource) if merge is not None else resource

    log.info("patient.linked_by_identifier", resources=len(again))
    return put_resources(session, again, now, None, merged)


def _put_identifiers(connection: Connection, written: list[dict[str, Any]]) -> None:
    """One row per (type, system, value); an identifier already held by another resource of the type is refused.

    Inserted with ON CONFLICT DO NOTHING; only the identifiers that were there already are read
    back, to check who holds them (usually none: one statement, not two).
    """
    claims: dict[tuple[str, str, str], str] = {}
    for res in written:
        identifiers = res.get("identifier") or []
        for ident in identifiers if isinstance(identifiers, list) else [identifiers]:  # QuestionnaireResponse has one
            if ident.get("system") and ident.get("value"):
                key = (res["resourceType"], identifier_key(ident["system"]), identifier_key(ident["value"]))
                if claims.setdefault(key, res["id"]) != res["id"]:
                    raise ValueError(f"identifier {ident['system']} is already used by another {key[0]}")
    if not claims:
        return
    rows = [{"resource_type": t, "system": s, "value": v, "resource_id": rid} for (t, s, v), rid in claims.items()]
    inserted = {(t, s, v) for t, s, v in connection.execute(_INSERT_NEW_IDENTIFIERS[connection.dialect.name], rows)}
    there = {key for key in claims if key not in inserted}
    if not there:
        return
    found = connection.execute(_IDENTIFIER_HOLDERS, _in_lists(("types", "systems", "values"), there))
    holders = {key: rid for t, s, v, rid in found if (key := (t, s, v)) in there}
    for key in there:
        if holders.get(key) != claims[key]:
            raise IdentifierTaken(key[0], key[1], claims[key], holders.get(key))

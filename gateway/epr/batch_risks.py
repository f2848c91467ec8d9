"""Issue 33 (a risk answer is never lost) for EPR contact batches: a row that is refused (its columns, its storing, or a
changed re-send of a contact that stands) still acts on the risk items among its measures (PHQ-9 item 9, CORE-10 item 6,
ReQoL-10 item 6) as a refused QuestionnaireResponse does (gateway.measures.responses): the patient's open CAS case escalated to
Urgent CN Review (CAS-10, CAS-04), or a Flag raised; the row's issues say what was done, or why not."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime
from typing import Any

from adapters.csv_rows import RefusedScores
from adapters.problems import Problem
from common import codes
from fhir_mapping.measure_answers import responses_from_item_scores
from fhir_mapping.pcmis import PCMIS_CONTACT_SYSTEM
from fhir_mapping.systmone import SYSTMONE_CONTACT_SYSTEM
from gateway.measures.responses import ResponseIntake, response_id

__all__ = ["refused_row_risks", "CONTACT_SYSTEMS"]

CONTACT_SYSTEMS = {"pcmis": PCMIS_CONTACT_SYSTEM, "systmone": SYSTMONE_CONTACT_SYSTEM}  # channel -> contact id system


def refused_row_risks(intake: ResponseIntake, channel: str, row: Any, now: datetime, first: Any = None) -> list[Problem]:
    """The refused row's risk answers acted on; one warning per risk item, named `row[n].item.where(linkId=...)`.

    The responses are built as an accepted row's are (the same identifiers, so the same ids: a re-send finds the Flag or
    the escalation done). The patient is the row's NHS number; a row without a readable one is said NOT acted on. With
    `first` (the contact as first received, which stands), only the item scores the export has changed are read: the
    first version's own risk answers were acted on when it was stored."""
    scores = _scores(row)
    earlier = _scores(first) if first is not None else None
    if scores is not None and earlier is not None:
        scores = replace(scores, measures={m: _changed(v, earlier.measures.get(m, [])) for m, v in scores.measures.items()})
    if scores is None or not any(v is not None for values in scores.measures.values() for v in values):
        return []
    contact_id = row.contact_id or "row-" + hashlib.sha256(row.source).hexdigest()[:16]
    subject = {"identifier": {"system": codes.NHS_NUMBER, "value": scores.nhs_number}}
    responses = responses_from_item_scores(
        intake.catalogue, scores.measures, CONTACT_SYSTEMS[channel], contact_id, scores.contact_time or now, {}, {}
    )
    out: list[Problem] = []
    for qr in responses:
        qr_id = response_id(qr)  # from the identifier, as the accepted row's (gateway.epr.contact_batches._scored)
        candidate = {k: v for k, v in qr.items() if k not in ("subject", "encounter")} | {"subject": subject}
        for problem in intake.act_on_refused_risks(candidate, qr_id):
            element = (problem.element or "").replace("QuestionnaireResponse", f"row[{row.number}]", 1)
            out.append(replace(problem, element=element))
    return out


def _scores(row: Any) -> RefusedScores | None:
    """What the row recorded: its parsed contact's, else what its refusal kept."""
    contact = row.contact
    if contact is not None:
        return RefusedScores(contact.nhs_number, contact.contact_time, contact.measures)
    refused: RefusedScores | None = row.refused_scores
    return refused


def _changed(values: list[int | None], before: list[int | None]) -> list[int | None]:
    """The item scores that differ from the first version's (the rest read as unanswered)."""
    return [v if i >= len(before) or before[i] != v else None for i, v in enumerate(values)]

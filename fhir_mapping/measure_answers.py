"""Item scores recorded in another system (PCMIS, SystmOne) -> QuestionnaireResponses in our answer codes.

Takes item scores per measure (in the measure's item order; None = not recorded; -1 = the
item's "not applicable" answer) and returns FHIR JSON QuestionnaireResponses that the gateway's
one scorer checks and scores like any other response.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from common.datetimes import to_fhir_instant
from fhir_mapping.measures import MeasureCatalogue
from fhir_mapping.scoring import unanswered_required

__all__ = ["responses_from_item_scores"]


def responses_from_item_scores(
    catalogue: MeasureCatalogue,
    scores: dict[str, list[int | None]],
    source_system: str,
    source_id: str,
    when: datetime,
    patient_ref: dict[str, str],
    encounter_ref: dict[str, str],
    extra_items: dict[str, list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    out = []
    for measure_id, values in scores.items():
        if all(v is None for v in values):
            continue
        measure = catalogue.measures[measure_id]
        links = [i.link_id for i in measure.spec.items if i.scale]
        items = []
        for link, score in zip(links, values, strict=True):
            if score is None:
                continue
            entry = next(e for e in measure.allowed(link) if (e.score is None if score == -1 else e.score == score))
            coding = {"system": entry.system, "code": entry.code}
            items.append(
                {"linkId": link, "answer": [{"valueInteger": entry.value} if entry.value is not None else {"valueCoding": coding}]}
            )
        extras = (extra_items or {}).get(measure_id, [])
        # completed when every required item that is enabled is answered (GBO: a goal not given needs no rating, PC-14),
        # less what the instrument prorates over (scoring.unanswered_required)
        complete = not unanswered_required(measure, {i["linkId"]: i["answer"][0] for i in extras + items if i.get("answer")})
        out.append(
            {
                "resourceType": "QuestionnaireResponse",
                "identifier": {"system": source_system, "value": f"{source_id}#{measure_id}"},
                "questionnaire": measure.url,
                "status": "completed" if complete else "in-progress",
                "subject": patient_ref,
                "encounter": encounter_ref,
                "authored": to_fhir_instant(when),
                "item": extras + items,
            }
        )
    return out

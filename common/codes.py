"""Code systems and identifier systems the gateway writes. One place, so nothing drifts.

Systems under GATEWAY_BASE are the gateway's own (no national code exists for CAS queue
classification); everything else is national with its source in
shared/research/nhs-standards.md.
"""

from __future__ import annotations

__all__ = [
    "GATEWAY_BASE",
    "NHS_NUMBER",
    "ODS_ORG",
    "SNOMED",
    "UCUM",
    "CAS_CLASSIFICATION",
    "CAS_TASK_TYPE",
    "CAS_TASK_INPUT",
    "CLASSIFICATION_DISPLAY",
    "CAS_OPERATION",
    "PRACTITIONER_SUITABILITY",
    "PRIORITY_ORDER",
    "PATHWAYS_DX",
    "PATHWAYS_SG",
    "PATHWAYS_SD",
    "PATHWAYS_PW",
    "RED_FLAG_QUESTIONNAIRE",
    "UKCORE",
]

GATEWAY_BASE = "https://fhir.iap-gateway.org"
NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
ODS_ORG = "https://fhir.nhs.uk/Id/ods-organization-code"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
PATHWAYS_DX = "https://fhir.nhs.uk/CodeSystem/pathways-dx-codes"
PATHWAYS_SG = "https://fhir.nhs.uk/CodeSystem/pathways-sg-codes"
PATHWAYS_SD = "https://fhir.nhs.uk/CodeSystem/pathways-sd-codes"
PATHWAYS_PW = "https://fhir.nhs.uk/CodeSystem/pathways-pathway-codes"
UKCORE = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-"

CAS_CLASSIFICATION = f"{GATEWAY_BASE}/CodeSystem/cas-classification"
CAS_TASK_TYPE = f"{GATEWAY_BASE}/CodeSystem/cas-task-type"
CAS_TASK_INPUT = f"{GATEWAY_BASE}/CodeSystem/cas-task-input"
RED_FLAG_QUESTIONNAIRE = f"{GATEWAY_BASE}/Questionnaire/mhcas-red-flags"

# CAS classification codes (handbook wording as display). Later operations add more.
CLASSIFICATION_DISPLAY = {
    "urgent-cn-review": "Urgent CN Review",
    "refer-to-known-service": "Refer to a Known Service",
    "referred-to-known-service": "Referred to Known Service",
    "awaiting-ratification": "Awaiting CN ratification",
    "urgent-follow-up": "Urgent Follow Up",
}
CAS_OPERATION = f"{GATEWAY_BASE}/CodeSystem/cas-operation"
PRACTITIONER_SUITABILITY = f"{GATEWAY_BASE}/CodeSystem/practitioner-suitability"
PRIORITY_ORDER = ("routine", "urgent", "asap", "stat")  # FHIR request-priority, least to most urgent

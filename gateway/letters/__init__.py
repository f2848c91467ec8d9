"""Letters and their delivery: the outbox (request, worker, MESH / FHIR push / print / email / MLLP), the letter
pictures; routing.yaml."""

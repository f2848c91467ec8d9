"""Below adapters, fhir_mapping and gateway alike: times (`datetimes`: source times in, FHIR instants out, Europe/London
explicit) and the code and identifier systems the gateway reads and writes (`codes`). Imports nothing of the project."""

"""Pure mapping functions: typed source models -> fhir.resources R4B objects."""

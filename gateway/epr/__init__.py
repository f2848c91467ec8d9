"""EPR links: HL7 v2 intake and its patients, the MLLP listener, contact batches (PCMIS, SystmOne); rules/ the
sender profiles."""

"""The CAS queue: NHS 111, BaRS and MHPL intake, case operations, safety calls, queue summary, CLEO; rules/ its
engine and files."""

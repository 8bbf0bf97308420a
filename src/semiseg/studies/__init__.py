"""The studies users run: label-efficiency sweeps, the patient-level use case, the demo, and their
figures and HTML report."""

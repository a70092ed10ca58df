"""Training code (torch). Never imported by app/."""

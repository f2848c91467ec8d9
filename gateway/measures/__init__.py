"""Outcome measures: QuestionnaireResponse intake and scoring, and each patient's paired outcome summary."""

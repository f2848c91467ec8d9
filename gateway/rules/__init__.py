"""The rule files' lifecycle: check a candidate, what-if on real traffic, activate, history (issue 37). Each domain's
rules engine and files are in its own folder: gateway/cas/rules/, gateway/pathways/rules/, gateway/epr/rules/."""

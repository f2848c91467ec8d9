"""Primary care and Talking Therapies pathways: routing, episodes, clocks, wait list, wait letters, demo; rules/
its engine and files."""

"""The PDF rendition of a letter: its type's template file (Jinja2 HTML, `templates/types/`) drawn by fpdf2.

Deterministic: the same letter gives the same bytes (creation date = the letter's date, no
random ids), so a re-render for a re-send is the letter that was stored. The PDF core fonts
cover Latin-1; other characters are written as their closest Latin-1 form (or "?").
"""

from __future__ import annotations

import unicodedata
from datetime import datetime

from fpdf import FPDF

from fhir_mapping.letters.types import letter_types
from fhir_mapping.letters.view import LetterView, templates

__all__ = ["render_pdf", "letter_html"]


def letter_html(view: LetterView) -> str:
    template = letter_types()[view.letter_type].template
    return templates().get_template(f"types/{template}").render(view=view)


def _latin1(text: str) -> str:
    out = []
    for char in text:
        try:
            char.encode("latin-1")
            out.append(char)
        except UnicodeEncodeError:
            folded = unicodedata.normalize("NFKD", char).encode("latin-1", errors="ignore").decode("latin-1")
            out.append(folded or "?")
    return "".join(out)


def render_pdf(view: LetterView, created: datetime) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(created)
    pdf.set_title(f"{view.title} - {view.letter_id}")
    pdf.set_author(_latin1(view.sender))
    pdf.set_creator("iap-gateway")
    pdf.set_producer("iap-gateway")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", size=10)
    pdf.write_html(_latin1(letter_html(view)))
    return bytes(pdf.output())

"""Render one patient's structured record as a long, messy clinical note, with full provenance.

The gold label of every physiology field is defined by the note itself: it is the canonical value
of the single mention on the field's day (`Field.day`, hospital day 3 in the bundled schema), as
survlm.units computes it from what was written. Other days (before and after), outside-hospital
values, reference ranges, doses and home readings are there to be *not* extracted. Each mention records day, unit and character offsets.

Determinism: every random choice comes from a `random.Random` seeded by (seed, patient, purpose),
so adding days or filler to reach a token budget never changes what was already rendered.

Modules: `core` (mentions, rendered notes, seeded helpers), `days` (values per day), `writing` (one value as
written), `builder` (text with offsets), `styles` (the original five note styles), `families` (chart families in their own words,
survlm.notes.family_vocab), `patient` (one patient, and
the richest note within a token budget).
"""
from .builder import NoteBuilder
from .core import MAX_DAYS, MAX_FILLER_PER_DAY, MIN_DAYS, Mention, RenderedNote, RenderError
from .days import DayPlan, plan_days
from .families import FAMILY_STYLES, FamilyWriter
from .patient import LEVELS, ORIGINAL_STYLES, STATIC_FIELDS, STYLES, patient_facts, render_patient, render_to_budget
from .styles import REFERENCE_RANGES
from .writing import ALT_UNIT, MentionWriter, Written

__all__ = ["ALT_UNIT", "DayPlan", "FAMILY_STYLES", "FamilyWriter", "LEVELS", "MAX_DAYS",
           "MAX_FILLER_PER_DAY", "MIN_DAYS", "Mention", "MentionWriter", "NoteBuilder", "ORIGINAL_STYLES",
           "REFERENCE_RANGES", "RenderError", "RenderedNote", "STATIC_FIELDS", "STYLES", "Written", "patient_facts",
           "plan_days", "render_patient", "render_to_budget"]

"""Wording of the chart families that share nothing with the original five styles. Pure data.

Each family has its own field labels, unit spellings, headings, history phrasing and filler, so that a
family left out of training is written in words the model has not seen in training. What every family
shares is the clinical content itself: diagnosis phrases, cancer phrases and comorbidity names
(survlm.notes.vocab), which are the values of the static fields. Field labels here never equal (ignoring
case) a label of another family or of vocab.LABELS; tests/test_families.py checks that.

A field whose labels are `None` in a family is written by position there (a lab skeleton, a vital-sign
string), not by name.
"""

NEW_FAMILIES = ("labsheet", "datagrid", "handoff", "narrative")

# field -> labels; None: the family writes this field by position only
LABELS = {
    "labsheet": {
        "coma_score": ["coma (SUPPORT)", "SUPPORT coma"], "mean_bp_mmhg": ["mean art. press."],
        "heart_rate_bpm": None, "resp_rate": None, "temperature_c": None, "wbc_k_ul": None,
        "pao2_fio2": ["PaO2:FiO2"], "albumin_g_dl": ["ALB-S", "Alb."], "bilirubin_mg_dl": ["TBIL", "T.bili"],
        "creatinine_mg_dl": None, "sodium_meq_l": None, "ph": None, "glucose_mg_dl": None, "bun_mg_dl": None,
        "urine_ml_day": ["24h urine", "urine/24h"],
    },
    "datagrid": {
        "coma_score": ["Coma Score (SUPPORT)"], "mean_bp_mmhg": ["NIBP Mean", "Art Line Mean"],
        "heart_rate_bpm": ["Pulse Rate"], "resp_rate": ["Resp. Rate"], "temperature_c": ["Body Temp"],
        "wbc_k_ul": ["WBC Count"], "pao2_fio2": ["PaO2/FiO2"], "albumin_g_dl": ["Albumin, Serum"],
        "bilirubin_mg_dl": ["Bilirubin, Total"], "creatinine_mg_dl": ["Creatinine, Serum"],
        "sodium_meq_l": ["Sodium, Serum"], "ph": ["pH, Arterial"], "glucose_mg_dl": ["Glucose, Serum"],
        "bun_mg_dl": ["Urea Nitrogen"], "urine_ml_day": ["Urine Output 24h"],
    },
    "handoff": {
        "coma_score": ["coma sc"], "mean_bp_mmhg": ["MAPs"], "heart_rate_bpm": ["rate"], "resp_rate": ["resp"],
        "temperature_c": ["Tmax", "tmax"], "wbc_k_ul": ["leuk"], "pao2_fio2": ["P:F"], "albumin_g_dl": ["s.alb"],
        "bilirubin_mg_dl": ["bili"], "creatinine_mg_dl": ["SCr"], "sodium_meq_l": ["Na+"], "ph": ["ABG pH"],
        "glucose_mg_dl": ["BG"], "bun_mg_dl": ["urea N"], "urine_ml_day": ["UO"],
    },
    "narrative": {
        "coma_score": ["a coma score (SUPPORT scale) of"], "mean_bp_mmhg": ["a mean pressure of"],
        "heart_rate_bpm": ["a pulse of", "a heart rhythm at"], "resp_rate": ["breathing at", "a respiratory rate near"],
        "temperature_c": ["a recorded temperature of", "a body temperature of"],
        "wbc_k_ul": ["a leukocyte count of", "white cells at"], "pao2_fio2": ["an oxygenation ratio of"],
        "albumin_g_dl": ["serum albumin measured at"], "bilirubin_mg_dl": ["total bilirubin measured at"],
        "creatinine_mg_dl": ["serum creatinine of"], "sodium_meq_l": ["a sodium level of"],
        "ph": ["an arterial pH of"], "glucose_mg_dl": ["a blood sugar of"], "bun_mg_dl": ["a urea nitrogen of"],
        "urine_ml_day": ["a urine output over 24 hours of"],
    },
}

# How each family spells a schema unit, per mention (one is drawn each time). "" = no unit written, used
# only where the field has an implicit unit. Keys (field, unit) override (unit) for one field. Every spelling
# fits the answer format's unit (survlm.schema: at most 16 characters).
UNITS = {
    "labsheet": {
        "°C": ["C", " C", "°C"], "°F": ["F", " F", "°F"], "g/dL": ["", " g/dL"], "g/L": [" g/L", " gm/L"],
        "mg/dL": ["", " mg/dL", " mg/dl"], "µmol/L": [" umol/L", " mcmol/L"], "mL/24 h": [" mL", " ml/24hr"],
        "L/24 h": [" L", " L/24hr"], "mmHg": ["", " mmHg"], "score": [""], "": [""],
    },
    "datagrid": {  # written once per row, in the row heading
        "°C": ["°C", "deg C"], "°F": ["°F", "deg F"], "10^3/µL": ["10*3/uL", "x10(9)/L"], "/min": ["/min"],
        ("resp_rate", "/min"): ["br/min", "/min"], ("heart_rate_bpm", "/min"): ["bpm", "/min"],
        "g/dL": ["g/dL"], "g/L": ["g/L"], "mg/dL": ["mg/dL"], "µmol/L": ["umol/L", "µmol/L"], "mEq/L": ["mEq/L"],
        "mmol/L": ["mmol/L"], "mL/24 h": ["mL/24hr", "mL"], "L/24 h": ["L/24hr"], "mmHg": ["mmHg", "mm Hg"],
        "score": [""], "": [""],
    },
    "handoff": {
        "°C": ["C", "c"], "°F": ["F", "f"], "10^3/µL": ["", "k/uL"], "cells/µL": ["/uL"], "/min": [""],
        "g/dL": [""], "g/L": [" g/l"], "mg/dL": [""], "µmol/L": [" umol/l", " mcmol/l"], "mEq/L": [""],
        "mmol/L": [" mmol/l"], "mL/24 h": ["cc", " ml"], "L/24 h": ["L", " l"], "mmHg": [""], "score": [""],
        "": [""],
    },
    "narrative": {  # spelled out where it fits the answer's 16-character unit
        "°C": [" degrees Celsius", " °C", " deg C"], "°F": [" deg Fahrenheit", " °F"],
        "10^3/µL": [" x10^9/L", " thousand/µL", " K/mcL"], "cells/µL": [" cells per µL"],
        ("heart_rate_bpm", "/min"): [" beats per minute", " per minute", " bpm"],
        ("resp_rate", "/min"): [" breaths/minute", " per minute"],
        "g/dL": [" g/dL", " grams per dL"], "g/L": [" g/L", " grams per litre"],
        "mg/dL": [" mg/dL", " mg per dL"], "µmol/L": [" micromol/litre", " µmol/L"],
        "mEq/L": [" mEq/L", " mEq per litre"], "mmol/L": [" mmol/L", " mmol per litre"],
        "mL/24 h": [" mL", " millilitres"], "L/24 h": [" litres", " L"], "mmHg": [" mmHg", " mm of mercury"],
        "score": [""], "": [""],
    },
}

# The other unit a field may be written in (per mention, at the stage's alt_unit_rate); fields written by
# position keep their conventional unit.
ALT_UNITS = {"temperature_c": "°F", "wbc_k_ul": "cells/µL", "albumin_g_dl": "g/L", "bilirubin_mg_dl": "µmol/L",
             "creatinine_mg_dl": "µmol/L", "sodium_meq_l": "mmol/L", "glucose_mg_dl": "mmol/L",
             "urine_ml_day": "L/24 h"}

# A GCS written beside the coma score as context in some families (never a label): an illustrative,
# monotone pairing from the SUPPORT coma score's values to eye / verbal / motor components, not the SUPPORT
# study's derivation table. Its numbers are not a value of any schema field.
GCS_OF_COMA = {0: (4, 5, 6), 9: (4, 4, 6), 26: (3, 4, 6), 37: (3, 3, 5), 41: (2, 3, 5), 44: (3, 2, 5),
               55: (2, 2, 4), 61: (2, 1, 4), 89: (1, 1, 3), 94: (1, 1, 2), 100: (1, 1, 1)}

# Headings, history phrasing, date formats and filler, per family.
TEXT = {
    "labsheet": {
        "title": ["LAB AND DATA REVIEW", "RESULTS REVIEW - LABS/DATA"],
        "admit": ["Admitted: {date}", "Adm dt {date}"],
        "dx": ["Dx: ", "Working dx: "], "onc": ["Onc status: ", "Malignancy: "],
        "pmh": ["Chronic problems: ", "Hx: "], "pmh_none": ["nil"], "pmh_sep": [", "],
        "flag": "Additional hx: ", "prior": ["Referring facility chem (pre-admission): ", "Pre-transfer chem: "],
        "home_glucose": None,
        "date_formats": ["%m/%d/%Y", "%d-%b-%Y"], "day_heading": ["== {date} ==", "[{date}]"],
        "filler": [
            "Mg 2.{d}, Phos 3.{d} (not repleted).", "Lactate trending down on repeat.", "Troponin flat x2.",
            "Coags: INR 1.{d}.", "Blood cx: NGTD.", "UA: bland sediment.", "Procalcitonin sent.",
            "Ammonia not rechecked.", "TSH wnl.", "Lipase within normal limits.", "BNP pending.",
            "Type and screen on file.",
        ],
    },
    "datagrid": {
        "title": ["FLOWSHEET EXPORT - CRITICAL CARE", "ICU FLOW RECORD (EXPORTED)"],
        "admit": ["Admit Date: {date}", "Encounter start: {date}"],
        "dx": ["Principal Problem: "], "onc": ["Oncology Status: "], "pmh": ["Active Problem List: "],
        "pmh_none": ["(none on file)"], "pmh_sep": [" / "], "flag": "Other Problems: ",
        "prior": ["Outside Results (prior to admission): "], "home_glucose": None,
        "date_formats": ["%m/%d", "%Y-%m-%d", "%d.%m."], "day_heading": None,
        "filler": [
            "Line/Drain: PICC dressing changed.", "Restraint order renewed.", "Fall risk reassessed, bed alarm on.",
            "Isolation: contact precautions.", "Diet order: NPO except meds.", "Braden reassessed.",
            "Device: SCDs on both legs.", "Chaplain visit documented.", "Interpreter used for family update.",
            "Glycemic protocol: per order set.", "Foley removed, voiding trial started.", "Skin check complete.",
        ],
    },
    "handoff": {
        "title": ["XCOVER LOG", "NIGHT FLOAT HANDOFF"],
        "admit": ["adm {date}", "in since {date}"],
        "dx": ["w/ "], "onc": ["onc: "], "pmh": ["hx "], "pmh_none": ["nil sig"], "pmh_sep": ["/"],
        "flag": "also ", "prior": ["pta: ", "at OSH: "], "home_glucose": "home BG",
        "date_formats": ["%m/%d", "%m-%d"], "day_heading": ["{date} {time} xc:", "{date} {time} -"],
        "filler": [
            "f/u BCx.", "cont abx, day per ID.", "NPO p MN for IR.", "PT/OT c/s placed.", "dispo SNF?",
            "fam mtg tmrw.", "DNR/DNI confirmed.", "keep K>4, Mg>2.", "PRN haldol x1 for agitation.",
            "trend lactate.", "no acute events.", "touch base w/ renal re HD access.",
        ],
    },
    "narrative": {
        "title": ["DISCHARGE SUMMARY (NARRATIVE)", "SUMMARY OF HOSPITAL STAY"],
        "admit": ["Date of admission: {date}.", "The patient came to us on {date}."],
        "dx": ["The reason for this stay was "], "onc": ["Regarding malignancy, the record notes "],
        "pmh": ["Longstanding conditions include "], "pmh_none": ["no chronic illness"], "pmh_sep": [", "],
        "flag": "The chart further mentions ", "prior": ["Before arrival, an outside facility reported "],
        "home_glucose": "a home meter reading of",
        "date_formats": ["%B %d, %Y", "%A, %B %d"], "day_heading": ["{date}.", "On {date},"],
        "filler": [
            "The family visited and questions were answered.", "Nutrition was advanced as tolerated.",
            "Physiotherapy worked on transfers.", "The palliative care team met with the family.",
            "A swallow evaluation was performed at the bedside.", "Anticoagulation was held for a procedure.",
            "Antibiotics were narrowed according to sensitivities.", "A repeat chest film was unchanged.",
            "Sedation was lightened for an awakening trial.", "Diuresis was continued gently.",
            "The central line was removed without complication.", "Sleep was poor despite melatonin.",
        ],
    },
}

# Heavy abbreviation of the comorbidity names (handoff family); other families write them in full.
COMORBIDITY_ABBREV = {
    "coronary artery disease": "CAD", "chronic kidney disease": "CKD", "atrial fibrillation": "AF",
    "prior stroke": "old CVA", "peripheral vascular disease": "PVD", "hypothyroidism": "hypoT4",
    "osteoporosis": "OP", "chronic liver disease": "CLD", "obstructive sleep apnea": "OSA",
    "rheumatoid arthritis": "rheum. arthritis", "prior myocardial infarction": "old MI", "chronic anemia": "anemia",
    "depression": "MDD", "HIV": "HIV",
    "type 2 diabetes mellitus": "T2DM", "diabetes mellitus": "DM", "DM2": "DM2", "insulin-dependent diabetes": "IDDM",
    "dementia": "dementia", "Alzheimer dementia": "Alzheimer dz", "vascular dementia": "vasc dementia",
}

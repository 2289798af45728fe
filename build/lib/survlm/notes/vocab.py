"""Clinical wording the note renderer draws from. Pure data; no patient data lives here."""

# How each physiology field is labelled in a note, by register: terse (flowsheets, sign-outs)
# or prose (narratives). Keyed by field name of the bundled SUPPORT2 schema.
LABELS = {
    "coma_score": (["SCOMA", "coma score"], ["SUPPORT coma score", "coma score"]),
    "mean_bp_mmhg": (["MAP"], ["MAP", "mean arterial pressure"]),
    "heart_rate_bpm": (["HR", "P"], ["heart rate", "HR", "pulse"]),
    "resp_rate": (["RR"], ["respiratory rate", "RR", "respirations"]),
    "temperature_c": (["T", "Temp"], ["temperature", "temp", "T"]),
    "wbc_k_ul": (["WBC"], ["WBC", "white count", "white cell count"]),
    "pao2_fio2": (["P/F", "PF"], ["P/F ratio", "PaO2/FiO2 ratio"]),
    "albumin_g_dl": (["Alb"], ["albumin", "serum albumin"]),
    "bilirubin_mg_dl": (["Tbili", "T bili"], ["total bilirubin", "bilirubin"]),
    "creatinine_mg_dl": (["Cr", "Creat"], ["creatinine", "Cr"]),
    "sodium_meq_l": (["Na"], ["sodium", "Na"]),
    "ph": (["pH"], ["arterial pH", "pH"]),
    "glucose_mg_dl": (["Glu", "Gluc"], ["glucose", "serum glucose"]),
    "bun_mg_dl": (["BUN"], ["BUN", "blood urea nitrogen"]),
    "urine_ml_day": (["UOP", "U/O"], ["urine output", "24-hour urine output"]),
}
# Urea in mmol/L is a different analyte name from BUN in mg/dL.
UREA_LABELS = (["urea"], ["serum urea", "urea"])

# Written spellings of each schema unit (the schema's unit keys); "" means written without a unit.
UNIT_SPELLINGS = {
    "°C": ["C", "°C", " °C", " C", " degC"],
    "°F": ["F", "°F", " °F", " F"],
    "10^3/µL": ["", " K/uL", " x10^3/uL", " x10^9/L", " K/µL"],
    "cells/µL": [" cells/uL", " /mm3", " cells/µL"],
    "g/dL": ["", " g/dL", " g/dl"],
    "g/L": [" g/L"],
    "mg/dL": ["", " mg/dL", " mg/dl"],
    "µmol/L": [" umol/L", " µmol/L", " micromol/L"],
    "mEq/L": ["", " mEq/L", " meq/L"],
    "mmol/L": [" mmol/L"],
    "mL/24 h": [" mL", " mL/24h", " cc", " mL/day"],
    "L/24 h": [" L", " L/24h", " L/day"],
    "mmHg": ["", " mmHg"],
    "/min": ["", " bpm", "/min"],
    "score": [""],
    "": [""],
    "years": [""],
}
# Decimals used when writing a value in a unit (the canonical unit uses the field's own).
WRITE_DECIMALS = {"°F": 1, "cells/µL": 0, "g/L": 0, "µmol/L": 0, "L/24 h": 2}
FIELD_UNIT_DECIMALS = {("glucose_mg_dl", "mmol/L"): 1, ("bun_mg_dl", "mmol/L"): 1, ("sodium_meq_l", "mmol/L"): 0}

# Values used for other days when the day-3 value is missing (plausible, then perturbed).
TYPICAL = {
    "coma_score": 0, "mean_bp_mmhg": 80, "heart_rate_bpm": 95, "resp_rate": 22, "temperature_c": 37.2,
    "wbc_k_ul": 11.0, "pao2_fio2": 260, "albumin_g_dl": 2.9, "bilirubin_mg_dl": 1.2, "creatinine_mg_dl": 1.4,
    "sodium_meq_l": 137, "ph": 7.39, "glucose_mg_dl": 140, "bun_mg_dl": 25, "urine_ml_day": 1800,
}
# Day-to-day spread: ("abs", sd) in canonical units or ("rel", sd) as a fraction.
SPREAD = {
    "coma_score": ("abs", 15), "mean_bp_mmhg": ("abs", 9), "heart_rate_bpm": ("abs", 11), "resp_rate": ("abs", 4),
    "temperature_c": ("abs", 0.6), "wbc_k_ul": ("rel", 0.2), "pao2_fio2": ("rel", 0.2), "albumin_g_dl": ("abs", 0.3),
    "bilirubin_mg_dl": ("rel", 0.25), "creatinine_mg_dl": ("rel", 0.2), "sodium_meq_l": ("abs", 3),
    "ph": ("abs", 0.05), "glucose_mg_dl": ("rel", 0.25), "bun_mg_dl": ("rel", 0.2), "urine_ml_day": ("rel", 0.3),
}
COMA_SCORES = [0, 9, 26, 37, 41, 44, 55, 61, 89, 94, 100]

VITALS = ["temperature_c", "heart_rate_bpm", "resp_rate", "mean_bp_mmhg", "coma_score"]
LABS = ["sodium_meq_l", "creatinine_mg_dl", "bun_mg_dl", "glucose_mg_dl", "wbc_k_ul", "albumin_g_dl",
        "bilirubin_mg_dl"]
GASES = ["ph", "pao2_fio2"]
OUTPUTS = ["urine_ml_day"]

SEX_WORDS = {
    "male": {"noun": ["man", "male", "gentleman"], "short": "M", "pron": "he", "poss": "his"},
    "female": {"noun": ["woman", "female", "lady"], "short": "F", "pron": "she", "poss": "her"},
}

DISEASE_PHRASES = {
    "ARF/MOSF w/Sepsis": ["septic shock with acute respiratory failure and multiorgan dysfunction",
                          "sepsis complicated by ARF and MOSF", "acute respiratory failure from sepsis with multiorgan failure"],
    "CHF": ["acute decompensated congestive heart failure", "CHF exacerbation", "decompensated systolic heart failure"],
    "COPD": ["acute exacerbation of COPD", "COPD exacerbation with hypercapnia", "AECOPD"],
    "Lung Cancer": ["complications of lung cancer", "progressive non-small cell lung cancer", "lung cancer with dyspnea"],
    "MOSF w/Malig": ["multiorgan failure in the setting of malignancy", "MOSF with underlying malignancy",
                     "multisystem organ failure complicating cancer"],
    "Coma": ["nontraumatic coma", "coma after cardiac arrest", "unresponsiveness, comatose on arrival"],
    "Colon Cancer": ["complications of colon cancer", "colon adenocarcinoma with obstruction", "colorectal cancer"],
    "Cirrhosis": ["decompensated cirrhosis", "cirrhosis with ascites and encephalopathy", "end-stage liver disease from cirrhosis"],
}
CANCER_SITES = ["prostate", "breast", "bladder", "renal cell", "pancreatic", "gastric", "ovarian", "head and neck"]
CANCER_PHRASES = {
    "yes": ["{site} cancer, no known metastases", "localized {site} cancer", "history of {site} cancer, treated"],
    "metastatic": ["metastatic {site} cancer", "stage IV {site} cancer with liver metastases",
                   "{site} cancer metastatic to bone"],
    "no": ["no history of malignancy", "no known cancer"],
}
SITE_OF_GROUP = {"Lung Cancer": "lung", "Colon Cancer": "colon"}

DIABETES_TERMS = ["type 2 diabetes mellitus", "diabetes mellitus", "DM2", "insulin-dependent diabetes"]
DEMENTIA_TERMS = ["dementia", "Alzheimer dementia", "vascular dementia"]
# Chronic comorbidities for problem lists (diabetes/dementia are added from the flags).
COMORBIDITIES = ["coronary artery disease", "chronic kidney disease", "atrial fibrillation", "prior stroke",
                 "peripheral vascular disease", "hypothyroidism", "osteoporosis", "chronic liver disease",
                 "obstructive sleep apnea", "rheumatoid arthritis", "prior myocardial infarction",
                 "chronic anemia", "depression", "HIV"]

# Narrative filler with no value of any schema field in it (doses and settings are deliberate distractors).
FILLER = [
    "Seen and examined at bedside; family updated by phone.",
    "Lines: right IJ central line day {n}, foley in place.",
    "Continued on heparin 5000 units SC q8h for DVT prophylaxis.",
    "Insulin sliding scale continued; lispro {d} units given with lunch.",
    "Chest x-ray: stable bibasilar opacities, no new consolidation.",
    "Tolerating tube feeds at goal {g} mL/hr.",
    "Physical therapy consulted; out of bed to chair with assist x2.",
    "Furosemide {d}0 mg IV given with good response.",
    "Pantoprazole 40 mg IV daily for stress ulcer prophylaxis.",
    "Potassium repleted with KCl 40 mEq PO.",
    "Skin intact; turned q2h, heels offloaded.",
    "Pain controlled on fentanyl {d}5 mcg/hr.",
    "Blood cultures from admission remain no growth to date.",
    "Goals of care discussed with daughter; full code for now.",
    "Magnesium repleted with 2 g IV.",
    "Echo: EF 35-40%, mild MR, no effusion.",
    "Sputum culture with normal flora.",
    "Vancomycin trough pending; cefepime 2 g IV q8h continued.",
    "Nutrition following; calorie count started.",
    "Case management involved for disposition planning.",
    "Oxygen weaned to 2 L nasal cannula overnight.",
    "CT head without acute intracranial process.",
    "Social work met with spouse; support offered.",
    "Restraints discontinued; patient calm and redirectable.",
    "Wound care to sacral stage II ulcer per protocol.",
    "Lactulose titrated to 3 soft stools daily.",
    "Telemetry without arrhythmia overnight.",
    "Ambulated 30 feet with walker.",
    "Ultrasound-guided paracentesis removed {d}.5 L clear fluid.",
    "Metoprolol tartrate 25 mg PO BID resumed.",
]
ASSESSMENTS = ["clinically improving", "unchanged", "somewhat worse overnight", "hemodynamically stable",
               "critically ill but stable", "more alert", "still tenuous"]

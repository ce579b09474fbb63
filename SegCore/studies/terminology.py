"""DICOM terminology of the studies' labels: SNOMED CT category, type and modifier codes as 3D Slicer holds them.

    from SegCore.studies.terminology import LEFT_ATRIUM, terminology_of

    LEFT_ATRIUM.to_slicer_entry()                   # the segment's TerminologyEntry tag in a .seg.nrrd
    terminology_of("thalamus", 2, "right thalamus")  # Thalamus, modifier Right (from the 'left_right' set)

Every code below is copied from one of three files, named in each entry's `source`:
- GA: Slicer's SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json (Modules/Loadable/Terminologies/
  Resources), Slicer's default list; used wherever it has the concept, since Slicer then finds the entry in the
  list it opens first (and its recommended colour is the GenericAnatomyColors entry colours.py uses).
- DM: Slicer's SegmentationCategoryTypeModifier-DICOM-Master.json (DICOM PS3.16 CID 7150 / 7151 and their
  groups), for what GA lacks: left atrium, hippocampus, neoplasms.
- CID 6300: DICOM PS3.16 CID 6300 "Prostate Anatomy", for the prostate zones, which neither Slicer list has.
  Slicer's current Terminologies logic keeps the codes of an entry it finds in no loaded list
  (DeserializeTerminologyEntry copies them, UpdateEntryFromLoadedTerminologies leaves them); older Slicer
  versions looked every code up and dropped such an entry.
Where no exact concept exists the entry says which is the nearest and why. No entry names an anatomic region.
"""

from __future__ import annotations

from SegCore.studies.schema import DICOM_MASTER, Code, Label, Terminology

_GA = "Slicer SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json"
_DM = "Slicer SegmentationCategoryTypeModifier-DICOM-Master.json"

# Categories (CID 7150), the same codes in both lists.
ANATOMICAL_STRUCTURE = Code("SCT", "123037004", "Anatomical Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
# Laterality modifiers (CID 244), as the lists give them under a paired type.
LEFT = Code("SCT", "7771000", "Left")
RIGHT = Code("SCT", "24028007", "Right")

# GA gives Thalamus as 119406000 with Left / Right modifiers (DM has 42695009): GA is the list Slicer opens first.
_THALAMUS = Code("SCT", "119406000", "Thalamus")
THALAMUS = Terminology(ANATOMICAL_STRUCTURE, _THALAMUS, source=_GA)
LEFT_THALAMUS = Terminology(ANATOMICAL_STRUCTURE, _THALAMUS, LEFT, source=_GA)
RIGHT_THALAMUS = Terminology(ANATOMICAL_STRUCTURE, _THALAMUS, RIGHT, source=_GA)
LEFT_ATRIUM = Terminology(ANATOMICAL_STRUCTURE, Code("SCT", "82471001", "Left atrium"), context=DICOM_MASTER,
                          source=f"{_DM} (GA has no atria)")
# The muscle study segments all skeletal muscle of the L3 slice (psoas, paraspinal and abdominal wall muscles):
# GA's Tissue / Muscle, not 'Abdominal wall muscle', which is one of those groups.
MUSCLE = Terminology(TISSUE, Code("SCT", "71616004", "Muscle"), source=_GA)
PANCREAS = Terminology(ANATOMICAL_STRUCTURE, Code("SCT", "15776009", "Pancreas"), source=_GA)
LIVER = Terminology(ANATOMICAL_STRUCTURE, Code("SCT", "10200004", "Liver"), source=_GA)
SPLEEN = Terminology(ANATOMICAL_STRUCTURE, Code("SCT", "78961009", "Spleen"), source=_GA)
# MSD hepatic vessels are the portal and hepatic veins inside the liver: GA's Tissue / Vein covers both.
HEPATIC_VESSEL = Terminology(TISSUE, Code("SCT", "29092000", "Vein"), source=f"{_GA} (portal and hepatic veins)")
HIPPOCAMPUS_PART = Terminology(
    ANATOMICAL_STRUCTURE, Code("SCT", "5366008", "Hippocampus"), context=DICOM_MASTER,
    source=f"{_DM}; nearest: no code for the MSD's anterior (head) or posterior (body and tail) part, and the "
           "type's only modifiers are left / right, so both parts are Hippocampus, told apart by name")
_CID_6300 = "DICOM PS3.16 CID 6300 Prostate Anatomy (category Anatomical Structure, CID 7150; in no Slicer list)"
PROSTATE_PERIPHERAL_ZONE = Terminology(
    ANATOMICAL_STRUCTURE, Code("SCT", "279706003", "Peripheral zone of the prostate"), context=DICOM_MASTER,
    source=_CID_6300)
PROSTATE_TRANSITION_ZONE = Terminology(
    ANATOMICAL_STRUCTURE, Code("SCT", "399384005", "Transition zone of the prostate"), context=DICOM_MASTER,
    source=_CID_6300)

# Lesions (Morphologically Altered Structure, CID 7159).
EDEMA = Terminology(ALTERED_STRUCTURE, Code("SCT", "79654002", "Edema"), source=_GA)
NON_ENHANCING_TUMOUR = Terminology(
    ALTERED_STRUCTURE, Code("SCT", "6574001", "Necrosis"),
    source=f"{_GA}; nearest: no code for non-enhancing tumour; BraTS' label is the necrotic and non-enhancing "
           "tumour core, and necrosis is its coded part")
NEOPLASM = Terminology(ALTERED_STRUCTURE, Code("SCT", "108369006", "Neoplasm"), context=DICOM_MASTER,
                       source=f"{_DM} (GA has only Mass; MSD tumours mix primary and secondary)")
ENHANCING_TUMOUR = Terminology(
    ALTERED_STRUCTURE, Code("SCT", "108369006", "Neoplasm"), context=DICOM_MASTER,
    source=f"{_DM}; nearest: no code for the enhancing part of a tumour, so the tumour itself")
PRIMARY_NEOPLASM = Terminology(ALTERED_STRUCTURE, Code("SCT", "86049000", "Neoplasm, Primary"),
                               context=DICOM_MASTER, source=f"{_DM} (primary lung / colon cancers)")


def study_label(study: str | None, value: int, name: str) -> Label | None:
    """The label `value` called `name` (case-insensitive) of study `study` (its colour and terminology), searching
    its labels, its label sets and its MSD tasks; None for an unknown study or label, or when two matches
    disagree (Decathlon tasks that give one name different colours or codes)."""
    from SegCore.studies import STUDIES

    if study not in STUDIES:
        return None
    record = STUDIES[study]
    sets = [record.labels, *(labels for _, labels in record.label_sets), *(task.labels for task in record.tasks)]
    found = {(label.colour_rgb, label.terminology): label for labels in sets for label in labels
             if label.value == int(value) and label.name.lower() == str(name).lower()}
    return next(iter(found.values())) if len(found) == 1 else None


def terminology_of(study: str | None, value: int, name: str) -> Terminology | None:
    """The terminology of `study_label(study, value, name)`, None where that is None."""
    label = study_label(study, value, name)
    return None if label is None else label.terminology

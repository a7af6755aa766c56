"""A deterministic, streaming generator of a Chinese 三甲 hospital's population as FHIR R4 JSON.

One fictional hospital (Organization), its doctors (Practitioner), and adult patients with
门诊/急诊/住院 encounters, ICD-10 (国家临床版 2.0) encounter diagnoses, and 血常规/肝功能/肾功能
laboratory results (Observation + DiagnosticReport) in the units and reference intervals Chinese
laboratories print. Resources are plain JSON-ready dicts, valid R4 (no empty strings or arrays,
dateTimes with +08:00), with stable ids (`pat-000001`, `obs-000001-0001`) so references such as
`Patient/pat-000001` resolve inside the generated population.

Every value comes from a `random.Random` seeded from (seed, what, whose id), never from global
state or the clock, so the same seed yields the same bytes, and a patient's encounters,
diagnoses and results can be regenerated from the Patient resource alone. Iterators let a
million Observations stream through without being held in memory.

Identifier namespaces and code systems are the national ones (OIDs under 2.16.156.10011, see
the team's cn-emr-standards notes). Reference intervals are the adult ones of WS/T 405-2012
(血细胞分析), WS/T 404.1/404.2-2012 (ALT/AST, TP/ALB) and WS/T 404.5-2015 (尿素/肌酐), and
common Chinese laboratory ranges for TBIL and UA. Patients are adults (20-95) so that the adult
intervals apply.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

from app.samples.identity import make_id

Resource = dict[str, Any]

CST = timezone(timedelta(hours=8))
WINDOW_START = date(2024, 1, 1)  # first day encounters may fall on
AS_OF = date(2026, 11, 1)  # "today" of the generated population; nothing happens after it

# Identifier namespaces (WS/T 500 / CDA practice, urn:oid:2.16.156.10011.1.x).
OID_ID_CARD = "urn:oid:2.16.156.10011.1.3"  # 居民身份证号
OID_STAFF = "urn:oid:2.16.156.10011.1.4"  # 医务人员 ID
OID_ORG = "urn:oid:2.16.156.10011.1.5"  # 医疗机构
OID_OUTPATIENT_NO = "urn:oid:2.16.156.10011.1.11"  # 门(急)诊号
OID_INPATIENT_NO = "urn:oid:2.16.156.10011.1.12"  # 住院号
OID_MRN = "urn:oid:2.16.156.10011.1.13"  # 病案号
OID_LAB_REPORT_NO = "urn:oid:2.16.156.10011.1.33"  # 检验报告单号

# Code systems (urn:oid:2.16.156.10011.2.3.x).
CS_ID_TYPE = "urn:oid:2.16.156.10011.2.3.1.1"  # 身份证件类别 CV02.01.101
CS_ADMIT_SOURCE = "urn:oid:2.16.156.10011.2.3.1.270"  # 入院途径 CV09.00.403
CS_PATIENT_TYPE = "urn:oid:2.16.156.10011.2.3.1.271"  # 患者类型 CV09.00.404
CS_ETHNICITY = "urn:oid:2.16.156.10011.2.3.3.3"  # 民族 GB 3304
CS_SEX = "urn:oid:2.16.156.10011.2.3.3.4"  # 生理性别 GB/T 2261.1
CS_MARITAL = "urn:oid:2.16.156.10011.2.3.3.5"  # 婚姻状况 GB/T 2261.2
CS_ICD10 = "urn:oid:2.16.156.10011.2.3.3.11"
ICD10_VERSION = "国家临床版2.0"  # 医保版 2.0 shares the system but not every code

HL7_TERM = "http://terminology.hl7.org/CodeSystem/"
ACT_CODE = HL7_TERM + "v3-ActCode"
INTERPRETATION = HL7_TERM + "v3-ObservationInterpretation"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# There is no national CN Core IG, so Yilian defines these two extensions itself; their
# StructureDefinitions belong in fhir_profiles/ under the same URLs.
EXT_BASE = "https://fhir.yilian.cn/StructureDefinition/"
# On Patient._gender: the GB/T 2261.1 code beside the FHIR one.
EXT_SEX = EXT_BASE + "gender-code"
# On Patient: 民族 (GB 3304).
EXT_ETHNICITY = EXT_BASE + "ethnicity"

# The fictional hospital's own LIS codes; `.example` (RFC 2606) keeps the URL from ever resolving.
LIS_ITEM_SYSTEM = "http://donghua-xiehe.example/fhir/CodeSystem/lis-item"
LIS_PANEL_SYSTEM = "http://donghua-xiehe.example/fhir/CodeSystem/lis-panel"

HOSPITAL_NAME = "北京东华协和医院"
ORG_ID = "org-0001"
ORG_REF = "Organization/" + ORG_ID


# ---------------------------------------------------------------------------------------------
# People: surnames, given names, 民族, birthplaces and homes
# ---------------------------------------------------------------------------------------------

# Relative frequency (‰ of the population, rounded from the public security ministry's
# 2020 surname report) with a tail of rare and compound surnames whose pinyin trips up search:
# 单 Shàn, 曾 Zēng, 解 Xiè, 仇 Qiú, 查 Zhā, 区 Ōu, 朴 Piáo, 尉迟 Yùchí.
SURNAMES: tuple[tuple[str, float], ...] = (
    ("王", 71), ("李", 70), ("张", 66), ("刘", 54), ("陈", 46), ("杨", 31), ("黄", 22),
    ("赵", 20), ("吴", 19), ("周", 19), ("徐", 16), ("孙", 15), ("马", 14), ("朱", 13),
    ("胡", 13), ("郭", 12), ("何", 12), ("林", 10), ("高", 10), ("罗", 10), ("郑", 9),
    ("梁", 9), ("谢", 7), ("宋", 7), ("唐", 7), ("许", 6), ("韩", 6), ("冯", 6), ("邓", 6),
    ("曹", 6), ("彭", 5), ("曾", 5), ("肖", 5), ("田", 5), ("董", 5), ("袁", 4), ("潘", 4),
    ("于", 4), ("蒋", 4), ("蔡", 4), ("余", 4), ("杜", 4), ("叶", 4), ("程", 4), ("苏", 3),
    ("魏", 3), ("吕", 3), ("丁", 3), ("任", 3), ("沈", 3), ("姚", 3), ("卢", 3), ("姜", 3),
    ("崔", 3), ("钟", 3), ("谭", 3), ("陆", 3), ("汪", 3), ("范", 3), ("金", 3), ("石", 3),
    ("廖", 2), ("贾", 2), ("夏", 2), ("韦", 2), ("付", 2), ("方", 2), ("白", 2), ("邹", 2),
    ("孟", 2), ("熊", 2), ("秦", 2), ("邱", 2), ("江", 2), ("尹", 2), ("薛", 2), ("闫", 2),
    ("段", 2), ("雷", 2), ("侯", 2), ("龙", 2), ("史", 2), ("陶", 1), ("黎", 1), ("贺", 1),
    ("顾", 1), ("毛", 1), ("郝", 1), ("龚", 1), ("邵", 1), ("万", 1), ("钱", 1), ("严", 1),
    ("覃", 1), ("武", 1), ("戴", 1), ("莫", 1), ("孔", 1), ("向", 1), ("汤", 1),
    ("单", 0.6), ("解", 0.3), ("仇", 0.2), ("查", 0.2), ("区", 0.1), ("朴", 0.2),
    ("欧阳", 0.6), ("司马", 0.15), ("上官", 0.1), ("司徒", 0.15), ("诸葛", 0.05),
    ("皇甫", 0.05), ("令狐", 0.03), ("尉迟", 0.02), ("东方", 0.03), ("夏侯", 0.02),
    ("慕容", 0.02),
)

_MALE_CHARS = "伟强磊军勇杰涛斌超明刚平辉鹏华飞鑫波宁浩宇轩博文俊泽晨昊然睿哲峰亮健彬凯东林"
_FEMALE_CHARS = "芳娜敏静丽艳娟霞秀玲英红梅琳婷雪慧颖倩欣怡佳萱涵雨诗晴思雅琪璐洁燕蓉萍"

# Whole given names typical of a birth cohort: (born before, male names, female names).
_ERA_NAMES: tuple[tuple[int, tuple[str, ...], tuple[str, ...]], ...] = (
    (1965, ("建国", "建军", "国庆", "卫东", "志刚", "建华", "德明", "永福", "国强", "振华", "援朝"),
     ("桂英", "秀英", "淑珍", "玉兰", "凤英", "秀兰", "桂兰", "淑英", "丽华", "玉珍", "秀珍")),
    (1986, ("志强", "海涛", "建伟", "晓东", "国华", "立新", "永刚", "春雷", "伟东", "晓明"),
     ("丽娟", "晓燕", "春梅", "海燕", "丽萍", "红霞", "晓红", "美玲", "雪梅", "艳华")),
    (9999, ("子轩", "浩然", "宇航", "俊杰", "家豪", "思远", "博文", "子豪", "一鸣", "天宇"),
     ("梓涵", "欣怡", "雨桐", "诗涵", "思琪", "佳怡", "子涵", "雨萱", "可欣", "梦瑶")),
)

# Uyghur names are "given·father's name"; Tibetan names have no family name at all. Both are
# here because they break the family+given assumption that search and display code tend to make.
_UYGHUR_GIVEN = (("艾力", "买买提", "艾买提", "吐尔逊", "库尔班", "伊力哈木"),
                 ("古丽", "阿依古丽", "热依拉", "帕提古丽", "米热古丽", "努尔"))
_UYGHUR_FATHER = ("买买提", "吐尔逊", "艾力", "阿不都热合曼", "依明", "卡德尔")
_TIBETAN_PARTS = (("扎西", "顿珠", "次仁", "多吉", "平措", "旺堆"),
                  ("卓玛", "央金", "拉姆", "德吉", "曲珍", "次仁"))

# GB 3304 民族 codes used below.
ETHNICITIES = {
    "01": "汉族", "02": "蒙古族", "03": "回族", "04": "藏族", "05": "维吾尔族", "06": "苗族",
    "07": "彝族", "08": "壮族", "09": "布依族", "10": "朝鲜族", "11": "满族", "14": "白族",
    "15": "土家族",
}
# Share of minorities by province prefix of the birthplace (rough census proportions).
_MINORITIES: dict[str, tuple[tuple[str, float], ...]] = {
    "11": (("11", 0.03), ("03", 0.02)), "13": (("11", 0.03), ("03", 0.01)),
    "15": (("02", 0.17),), "21": (("11", 0.12),), "22": (("10", 0.04), ("11", 0.03)),
    "43": (("15", 0.04),), "45": (("08", 0.30),), "52": (("06", 0.10), ("09", 0.07)),
    "53": (("07", 0.10), ("14", 0.03)), "54": (("04", 0.86),), "64": (("03", 0.35),),
    "65": (("05", 0.45),),
}

# Birthplaces (the 身份证号 region code, GB/T 2260) with weights for a Beijing hospital:
# about half local, the rest from the provinces that send patients to Beijing.
BIRTHPLACES: tuple[tuple[str, str, float], ...] = (
    ("110101", "北京市东城区", 5), ("110102", "北京市西城区", 6), ("110105", "北京市朝阳区", 10),
    ("110106", "北京市丰台区", 6), ("110108", "北京市海淀区", 9), ("110112", "北京市通州区", 4),
    ("110114", "北京市昌平区", 3), ("110115", "北京市大兴区", 3),
    ("120103", "天津市河西区", 4), ("130102", "河北省石家庄市长安区", 5),
    ("130602", "河北省保定市竞秀区", 4), ("131003", "河北省廊坊市广阳区", 3),
    ("140105", "山西省太原市小店区", 3), ("150102", "内蒙古自治区呼和浩特市新城区", 3),
    ("210102", "辽宁省沈阳市和平区", 3), ("220102", "吉林省长春市南关区", 2),
    ("230103", "黑龙江省哈尔滨市南岗区", 3), ("310104", "上海市徐汇区", 1),
    ("320106", "江苏省南京市鼓楼区", 1), ("330106", "浙江省杭州市西湖区", 1),
    ("340104", "安徽省合肥市蜀山区", 1), ("350102", "福建省福州市鼓楼区", 1),
    ("370102", "山东省济南市历下区", 4), ("410105", "河南省郑州市金水区", 4),
    ("420106", "湖北省武汉市武昌区", 1), ("430103", "湖南省长沙市天心区", 1),
    ("440106", "广东省广州市天河区", 1), ("440305", "广东省深圳市南山区", 1),
    ("450103", "广西壮族自治区南宁市青秀区", 1), ("500103", "重庆市渝中区", 1),
    ("510107", "四川省成都市武侯区", 1), ("520102", "贵州省贵阳市南明区", 0.5),
    ("530102", "云南省昆明市五华区", 0.5), ("540102", "西藏自治区拉萨市城关区", 0.3),
    ("610113", "陕西省西安市雁塔区", 1), ("640104", "宁夏回族自治区银川市兴庆区", 0.5),
    ("650102", "新疆维吾尔自治区乌鲁木齐市天山区", 0.7),
)


@dataclass(frozen=True, slots=True)
class Area:
    """Where patients live: a 区/县 with a postcode and some real street names in it."""

    state: str
    city: str
    district: str
    postcode: str
    streets: tuple[str, ...]
    weight: float


HOME_AREAS: tuple[Area, ...] = (
    Area("北京市", "北京市", "东城区", "100010", ("东四北大街", "东直门内大街", "和平里东街"), 8),
    Area("北京市", "北京市", "西城区", "100032",
         ("西直门内大街", "德胜门外大街", "广安门内大街"), 8),
    Area("北京市", "北京市", "朝阳区", "100020", ("建国路", "朝阳北路", "望京街", "安立路"), 20),
    Area("北京市", "北京市", "丰台区", "100071", ("丰台北路", "南三环西路", "马家堡东路"), 10),
    Area("北京市", "北京市", "海淀区", "100080", ("中关村大街", "学院路", "万泉河路"), 16),
    Area("北京市", "北京市", "通州区", "101100", ("新华大街", "玉桥中路"), 8),
    Area("北京市", "北京市", "昌平区", "102200", ("回龙观西大街", "府学路"), 7),
    Area("北京市", "北京市", "大兴区", "102600", ("兴华大街", "黄村西大街"), 7),
    Area("天津市", "天津市", "河西区", "300202", ("友谊路", "解放南路"), 3),
    Area("河北省", "石家庄市", "长安区", "050011", ("中山东路", "建设北大街"), 3),
    Area("河北省", "保定市", "竞秀区", "071051", ("朝阳北大街", "东风西路"), 3),
    Area("河北省", "廊坊市", "广阳区", "065000", ("新华路", "爱民东道"), 3),
)

# Mobile number segments actually issued by 中国移动/联通/电信 (a subset).
_MOBILE_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151",
                    "152", "153", "155", "156", "157", "158", "159", "166", "176", "177", "180",
                    "181", "182", "183", "185", "186", "187", "188", "189", "191", "198", "199")

# Age bands for patients: (lowest age, highest age, weight). A general hospital skews old.
_AGE_BANDS = ((20, 29, 11), (30, 39, 15), (40, 49, 16), (50, 59, 19), (60, 69, 20),
              (70, 79, 13), (80, 95, 6))

# (code, GB/T 2261.2 display, v3-MaritalStatus code, v3 display)
_AGE_BAND_CUM = list(itertools.accumulate(w for *_, w in _AGE_BANDS))
_BIRTHPLACE_CUM = list(itertools.accumulate(w for *_, w in BIRTHPLACES))
_AREA_CUM = list(itertools.accumulate(a.weight for a in HOME_AREAS))
_SURNAMES = tuple(s for s, _ in SURNAMES)
_SURNAME_CUM = list(itertools.accumulate(w for _, w in SURNAMES))

_MARITAL = {
    "10": ("未婚", "S", "Never Married"), "20": ("已婚", "M", "Married"),
    "30": ("丧偶", "W", "Widowed"), "40": ("离婚", "D", "Divorced"),
}


# ---------------------------------------------------------------------------------------------
# Departments and diagnoses
# ---------------------------------------------------------------------------------------------

DEPARTMENTS = ("心血管内科", "内分泌科", "呼吸与危重症医学科", "消化内科", "神经内科", "肾内科",
               "血液内科", "普通外科", "骨科", "急诊科", "检验科")
EMERGENCY_DEPT = DEPARTMENTS.index("急诊科")
LAB_DEPT = DEPARTMENTS.index("检验科")
_DOCTOR_TITLES = ("主任医师", "副主任医师", "主治医师", "住院医师")
_LAB_TITLES = ("主任技师", "副主任技师", "主管技师", "技师")


@dataclass(frozen=True, slots=True)
class Disease:
    """An ICD-10 (国家临床版 2.0) diagnosis and how it shows up in this hospital."""

    code: str
    display: str
    department: str
    chronic: bool
    classes: str  # encounter classes it is seen in: A 门诊, E 急诊, I 住院
    weights: tuple[float, float, float]  # relative frequency at ages <40, 40-64, 65+
    # How far (in standard deviations of the healthy distribution) it moves lab results.
    effects: dict[str, float] = field(default_factory=dict)
    # Share of patients in each age band who carry it as a known chronic comorbidity.
    prevalence: tuple[float, float, float] = (0.0, 0.0, 0.0)


DISEASES: tuple[Disease, ...] = (
    Disease("I10.x00x002", "原发性高血压", "心血管内科", True, "AI", (2, 10, 14),
            prevalence=(0.04, 0.28, 0.50)),
    Disease("I25.103", "冠状动脉粥样硬化性心脏病", "心血管内科", True, "AEI", (0.2, 4, 8),
            prevalence=(0.0, 0.04, 0.14)),
    Disease("I50.900", "心力衰竭", "心血管内科", True, "AEI", (0.1, 1, 4),
            {"BUN": 1.5, "Cr": 1.0}, prevalence=(0.0, 0.005, 0.04)),
    Disease("E11.900", "2型糖尿病", "内分泌科", True, "AI", (1, 8, 9),
            prevalence=(0.02, 0.12, 0.20)),
    Disease("E78.500", "高脂血症", "内分泌科", True, "A", (2, 6, 5), {"ALT": 0.6},
            prevalence=(0.05, 0.20, 0.22)),
    Disease("E03.900", "甲状腺功能减退症", "内分泌科", True, "A", (2, 2, 1),
            prevalence=(0.01, 0.02, 0.02)),
    Disease("J06.900", "急性上呼吸道感染", "呼吸与危重症医学科", False, "AE", (10, 5, 3),
            {"WBC": 0.8, "LYMPH%": 0.5}),
    Disease("J20.900", "急性支气管炎", "呼吸与危重症医学科", False, "AE", (4, 4, 4),
            {"WBC": 1.2, "NEUT%": 1.0}),
    Disease("J18.900", "肺炎", "呼吸与危重症医学科", False, "AEI", (2, 3, 6),
            {"WBC": 3.0, "NEUT%": 3.0, "ALB": -1.0}),
    Disease("J44.100", "慢性阻塞性肺病伴有急性加重", "呼吸与危重症医学科", True, "AEI", (0, 1.5, 5),
            {"WBC": 2.0, "NEUT%": 2.0}, prevalence=(0.0, 0.02, 0.08)),
    Disease("K29.700", "胃炎", "消化内科", False, "A", (6, 6, 4)),
    Disease("K76.000", "脂肪肝", "消化内科", True, "A", (4, 5, 2), {"ALT": 2.0, "AST": 1.2},
            prevalence=(0.05, 0.10, 0.05)),
    Disease("D64.900", "贫血", "血液内科", False, "AI", (3, 2, 3),
            {"HGB": -3.0}),
    Disease("I63.900", "脑梗死", "神经内科", True, "AEI", (0.2, 3, 7),
            prevalence=(0.0, 0.02, 0.06)),
    Disease("N18.900", "慢性肾脏病", "肾内科", True, "AI", (0.5, 2, 4),
            {"Cr": 6.0, "BUN": 4.0, "UA": 2.0, "HGB": -2.0}, prevalence=(0.005, 0.02, 0.06)),
    Disease("N39.000", "泌尿道感染", "肾内科", False, "AE", (4, 3, 4), {"WBC": 1.5, "NEUT%": 1.5}),
    Disease("K80.200", "胆囊结石", "普通外科", False, "AEI", (2, 4, 3), {"TBIL": 1.0}),
    Disease("K35.800", "急性阑尾炎", "普通外科", False, "EI", (4, 2, 1),
            {"WBC": 3.0, "NEUT%": 3.0}),
    Disease("M51.202", "腰椎间盘突出症", "骨科", True, "AI", (4, 5, 3)),
)
DISEASES_BY_CODE = {d.code: d for d in DISEASES}
_CHRONIC = tuple(d for d in DISEASES if any(d.prevalence))

# Encounter classes: (letter used in Disease.classes, v3-ActCode, display, 患者类型 code and
# display, weight). Roughly a 三甲 hospital's mix of visits.
_CLASSES = (
    ("A", "AMB", "ambulatory", "1", "门诊", 65),
    ("E", "EMER", "emergency", "2", "急诊", 13),
    ("I", "IMP", "inpatient encounter", "3", "住院", 22),
)
_CLASS_CUM = list(itertools.accumulate(c[5] for c in _CLASSES))


def _age_band(age: int) -> int:
    return 0 if age < 40 else 1 if age < 65 else 2


def _disease_tables() -> dict[tuple[str, int], tuple[tuple[Disease, ...], list[float]]]:
    tables = {}
    for letter, *_ in _CLASSES:
        for band in range(3):
            pool = tuple(d for d in DISEASES if letter in d.classes and d.weights[band] > 0)
            tables[letter, band] = (pool, list(itertools.accumulate(d.weights[band] for d in pool)))
    return tables


_DISEASE_TABLES = _disease_tables()


# ---------------------------------------------------------------------------------------------
# Laboratory: analytes and panels
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Analyte:
    """One LIS item with its LOINC mapping, UCUM unit and adult reference interval."""

    code: str  # LIS item code as printed on Chinese reports
    name: str
    loinc: str
    loinc_display: str
    ucum: str
    unit: str  # the unit as printed, for Quantity.unit
    decimals: int
    male: tuple[float, float]
    female: tuple[float, float]
    # Intervals for 60 and over, where the WS/T standard partitions by age.
    male_60: tuple[float, float] | None = None
    female_60: tuple[float, float] | None = None
    # Enzymes, bilirubin and counts are right-skewed in healthy people: sample them in log space.
    lognormal: bool = False

    def interval(self, male: bool, age: int) -> tuple[float, float]:
        if age >= 60:
            older = self.male_60 if male else self.female_60
            if older is not None:
                return older
        return self.male if male else self.female


def _a(code: str, name: str, loinc: str, loinc_display: str, ucum: str, unit: str, decimals: int,
       male: tuple[float, float], female: tuple[float, float] | None = None,
       **kw: Any) -> Analyte:
    return Analyte(code, name, loinc, loinc_display, ucum, unit, decimals, male, female or male,
                   **kw)


ANALYTES: dict[str, Analyte] = {a.code: a for a in (
    _a("WBC", "白细胞计数", "6690-2", "Leukocytes [#/volume] in Blood by Automated count",
       "10*9/L", "×10^9/L", 2, (3.5, 9.5), lognormal=True),
    _a("NEUT%", "中性粒细胞百分比", "770-8",
       "Neutrophils/100 leukocytes in Blood by Automated count", "%", "%", 1, (40, 75)),
    _a("LYMPH%", "淋巴细胞百分比", "736-9",
       "Lymphocytes/100 leukocytes in Blood by Automated count", "%", "%", 1, (20, 50)),
    _a("RBC", "红细胞计数", "789-8", "Erythrocytes [#/volume] in Blood by Automated count",
       "10*12/L", "×10^12/L", 2, (4.3, 5.8), (3.8, 5.1)),
    _a("HGB", "血红蛋白", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/L", "g/L", 0,
       (130, 175), (115, 150)),
    _a("HCT", "红细胞压积", "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count",
       "%", "%", 1, (40, 50), (35, 45)),
    _a("MCV", "平均红细胞体积", "787-2", "MCV [Entitic volume] by Automated count", "fL", "fL", 1,
       (82, 100)),
    _a("PLT", "血小板计数", "777-3", "Platelets [#/volume] in Blood by Automated count",
       "10*9/L", "×10^9/L", 0, (125, 350)),
    _a("ALT", "丙氨酸氨基转移酶", "1742-6",
       "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", "U/L", 0,
       (9, 50), (7, 40), lognormal=True),
    _a("AST", "天门冬氨酸氨基转移酶", "1920-8",
       "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", "U/L",
       0, (15, 40), (13, 35), lognormal=True),
    _a("TBIL", "总胆红素", "14631-6", "Bilirubin.total [Moles/volume] in Serum or Plasma",
       "umol/L", "μmol/L", 1, (3.4, 20.5), lognormal=True),
    _a("TP", "总蛋白", "2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/L", "g/L", 1,
       (65, 85)),
    _a("ALB", "白蛋白", "1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/L", "g/L", 1,
       (40, 55)),
    _a("Cr", "肌酐", "14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "umol/L",
       "μmol/L", 0, (57, 97), (41, 73), male_60=(57, 111), female_60=(41, 81)),
    # Chinese reports label this 尿素 or 尿素氮(BUN) interchangeably, but the interval in
    # WS/T 404.5 is for urea in mmol/L, so the LOINC code is the urea one, not urea nitrogen.
    _a("BUN", "尿素", "22664-7", "Urea [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 2,
       (3.1, 8.0), (2.6, 7.5), male_60=(3.6, 9.5), female_60=(3.1, 8.8)),
    _a("UA", "尿酸", "14933-6", "Urate [Moles/volume] in Serum or Plasma", "umol/L", "μmol/L", 0,
       (208, 428), (155, 357)),
)}


@dataclass(frozen=True, slots=True)
class Panel:
    """A 检验组合 as ordered: LIS code, name, LOINC panel, items in report order."""

    code: str
    name: str
    loinc: str
    loinc_display: str
    items: tuple[str, ...]
    weight: float  # how often it is ordered relative to the others


PANELS: dict[str, Panel] = {p.name: p for p in (
    Panel("XCG", "血常规", "58410-2", "CBC panel - Blood by Automated count",
          ("WBC", "NEUT%", "LYMPH%", "RBC", "HGB", "HCT", "MCV", "PLT"), 5),
    Panel("GGN", "肝功能", "24325-3", "Hepatic function 2000 panel - Serum or Plasma",
          ("ALT", "AST", "TBIL", "TP", "ALB"), 3),
    Panel("SGN", "肾功能", "24362-6", "Renal function 2000 panel - Serum or Plasma",
          ("Cr", "BUN", "UA"), 2),
)}
_PANEL_ORDER = tuple(PANELS.values())
_PANEL_CUM = list(itertools.accumulate(p.weight for p in _PANEL_ORDER))

_FLAG_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}


def _draw(rng: random.Random, a: Analyte, lo: float, hi: float, shift: float) -> float:
    """A raw value: healthy people fall inside [lo, hi] about 93% of the time; `shift` moves the
    centre by that many standard deviations (disease effects)."""
    if a.lognormal:
        sd = math.log(hi / lo) / 4
        return math.exp(rng.gauss(math.log(lo * hi) / 2 + shift * sd, sd * 1.1))
    sd = (hi - lo) / 4
    return rng.gauss((lo + hi) / 2 + shift * sd, sd * 1.1)


def _round(a: Analyte, x: float) -> float | int:
    # Nothing a Chinese analyser reports is zero or negative; clamp to one reportable unit.
    step = 10.0 ** -a.decimals
    x = max(x, step)
    if a.code.endswith("%"):
        x = min(x, 99.0)
    return round(x) if a.decimals == 0 else round(x, a.decimals)


def _sample_panel(rng: random.Random, panel: Panel, male: bool, age: int,
                  effects: dict[str, float]) -> list[tuple[Analyte, float | int]]:
    values: dict[str, float | int] = {}
    for code in panel.items:
        a = ANALYTES[code]
        lo, hi = a.interval(male, age)
        # Red-cell indices and the differential are not independent: derive them so that a
        # report never shows, say, a normal HGB with a very low HCT, or NEUT% + LYMPH% > 100.
        if code == "LYMPH%" and "NEUT%" in values:
            x = 100 - float(values["NEUT%"]) - rng.uniform(6, 12) + effects.get(code, 0) * 4
        elif code == "RBC" and "HGB" in panel.items:
            # HGB is drawn first and RBC follows through the MCH (about 30 pg per cell).
            hgb = _draw(rng, ANALYTES["HGB"], *ANALYTES["HGB"].interval(male, age),
                        effects.get("HGB", 0))
            values["HGB"] = _round(ANALYTES["HGB"], hgb)
            x = hgb / rng.gauss(30.0, 1.0)
        elif code == "HGB" and code in values:
            continue
        elif code == "HCT" and "HGB" in values:
            x = float(values["HGB"]) * rng.gauss(0.30, 0.006)  # MCHC about 330 g/L
        elif code == "MCV" and "HCT" in values and "RBC" in values:
            x = float(values["HCT"]) / float(values["RBC"]) * 10
        else:
            x = _draw(rng, a, lo, hi, effects.get(code, 0))
        values[code] = _round(a, x)
    return [(ANALYTES[code], values[code]) for code in panel.items]


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _pick(rng: random.Random, pairs: tuple[tuple[str, float], ...]) -> str:
    total = sum(w for _, w in pairs)
    x = rng.random() * total
    for value, w in pairs:
        x -= w
        if x < 0:
            return value
    return pairs[-1][0]


def _age(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def _seq(resource_id: str) -> str:
    """The part of an id after its type prefix: `pat-000001` → `000001`."""
    return resource_id.split("-", 1)[1]


_ORG_CODE_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"


def _uscc(rng: random.Random) -> str:
    """A 统一社会信用代码 (GB 32100-2015) for a Beijing 事业单位 with valid check characters.

    Characters 9-17 are a 组织机构代码 whose 9th character is the GB 11714-1997 check; the 18th
    is the GB 32100 MOD 31 check. Public hospitals are 事业单位 registered by 机构编制 ("12").
    """
    body = "".join(rng.choice("0123456789") for _ in range(8))
    s = sum(_ORG_CODE_CHARS.index(c) * w for c, w in zip(body, (3, 7, 9, 10, 5, 8, 4, 2),
                                                          strict=True))
    c9 = 11 - s % 11
    org_code = body + ("X" if c9 == 10 else "0" if c9 == 11 else str(c9))
    first17 = "12" + "110000" + org_code
    weights = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
    s = sum(_USCC_CHARS.index(c) * w for c, w in zip(first17, weights, strict=True))
    return first17 + _USCC_CHARS[(31 - s % 31) % 31]


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _chinese_name(rng: random.Random, male: bool, birth_year: int,
                  ethnicity: str = "01") -> tuple[str | None, str, str]:
    """(family, given, full text) as written on the 身份证."""
    if ethnicity == "05":
        given = rng.choice(_UYGHUR_GIVEN[0 if male else 1])
        father = rng.choice(_UYGHUR_FATHER)
        return father, given, f"{given}·{father}"
    if ethnicity == "04":
        first = rng.choice(_TIBETAN_PARTS[0])
        second = rng.choice([p for p in _TIBETAN_PARTS[0 if male else 1] if p != first])
        return None, first + second, first + second
    surname = _SURNAMES[bisect.bisect_right(_SURNAME_CUM, rng.random() * _SURNAME_CUM[-1])]
    roll = rng.random()
    if roll < 0.4:
        era = next(e for e in _ERA_NAMES if birth_year < e[0])
        given = rng.choice(era[1] if male else era[2])
    else:
        chars = _MALE_CHARS if male else _FEMALE_CHARS
        # Single-character given names were common until the 1980s and are rarer since.
        single = 0.45 if birth_year < 1985 else 0.15
        given = rng.choice(chars) if roll < 0.4 + 0.6 * single else "".join(rng.sample(chars, 2))
    return surname, given, surname + given


def _human_name(family: str | None, given: str, text: str) -> dict[str, Any]:
    name: dict[str, Any] = {"use": "official", "text": text}
    if family:
        name["family"] = family
    name["given"] = [given]
    return name


def _marital_status(rng: random.Random, age: int) -> str:
    weights: tuple[tuple[str, float], ...]
    if age < 25:
        weights = (("10", 90), ("20", 10))
    elif age < 35:
        weights = (("10", 40), ("20", 57), ("40", 3))
    elif age < 65:
        weights = (("10", 3), ("20", 88), ("30", 2), ("40", 7))
    else:
        weights = (("10", 1), ("20", 74), ("30", 21), ("40", 4))
    return _pick(rng, weights)


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------

class HospitalGenerator:
    """Deterministic FHIR R4 resources for one fictional 三甲 hospital.

    `practitioner_count` doctors are spread round-robin over DEPARTMENTS; encounters and reports
    only reference those, so emit `practitioners()` (all of them) before the patients' records.
    """

    def __init__(self, seed: int = 20261123, *, practitioner_count: int = 44) -> None:
        if practitioner_count < len(DEPARTMENTS):
            raise ValueError(f"practitioner_count must be at least {len(DEPARTMENTS)} (one per "
                             f"department), got {practitioner_count}")
        self.seed = seed
        self.practitioner_count = practitioner_count

    def _rng(self, *parts: object) -> random.Random:
        # String seeds are hashed with SHA-512 by `random`, so they are stable across runs and
        # Python versions (unlike hash()), and unrelated streams do not overlap.
        return random.Random("/".join(map(str, (self.seed, *parts))))

    # -- Organization -------------------------------------------------------------------------

    def organization(self) -> Resource:
        """The hospital (`org-0001`), identified by its 统一社会信用代码."""
        rng = self._rng("organization")
        return {
            "resourceType": "Organization",
            "id": ORG_ID,
            "identifier": [{"use": "official", "system": OID_ORG, "value": _uscc(rng)}],
            "active": True,
            "type": [{"coding": [_coding(HL7_TERM + "organization-type", "prov",
                                         "Healthcare Provider")],
                      "text": "三级甲等综合医院"}],
            "name": HOSPITAL_NAME,
            "alias": ["东华协和"],
            "telecom": [{"system": "phone", "value": f"010-6{rng.randrange(10**7):07d}",
                         "use": "work"}],
            "address": [{"use": "work", "type": "physical", "text": "北京市东城区东华门大街53号",
                         "line": ["东华门大街53号"], "city": "北京市", "district": "东城区",
                         "state": "北京市", "postalCode": "100006", "country": "CN"}],
        }

    # -- Practitioners ------------------------------------------------------------------------

    def practitioners(self, n: int | None = None) -> Iterator[Resource]:
        """The first `n` (default: all `practitioner_count`) doctors, `prac-0001` upwards."""
        for i in range(1, (self.practitioner_count if n is None else n) + 1):
            yield self._practitioner(i)

    def _practitioner(self, i: int) -> Resource:
        rng = self._rng("practitioner", i)
        dept = (i - 1) % len(DEPARTMENTS)
        rank = (i - 1) // len(DEPARTMENTS) % 4
        titles = _LAB_TITLES if dept == LAB_DEPT else _DOCTOR_TITLES
        male = rng.random() < 0.5
        # Seniority follows age: a 主任医师 is typically in their fifties, a 住院医师 about 30.
        birth = date(1968 + rank * 8 + rng.randrange(6), 1 + rng.randrange(12),
                     1 + rng.randrange(28))
        family, given, text = _chinese_name(rng, male, birth.year)
        return {
            "resourceType": "Practitioner",
            "id": f"prac-{i:04d}",
            "identifier": [{"system": OID_STAFF, "value": f"11011{birth.year % 100:02d}{i:08d}"}],
            "active": True,
            "name": [_human_name(family, given, text)],
            "telecom": [{"system": "phone", "value": f"010-6{rng.randrange(10**7):07d}",
                         "use": "work"}],
            "gender": "male" if male else "female",
            "birthDate": birth.isoformat(),
            "qualification": [{"code": {"text": titles[rank]},
                               "issuer": {"display": "国家卫生健康委员会"}}],
        }

    def _doctor_in(self, rng: random.Random, dept: int) -> str:
        n_dept = len(DEPARTMENTS)
        count = (self.practitioner_count - 1 - dept) // n_dept + 1
        return f"Practitioner/prac-{dept + 1 + rng.randrange(count) * n_dept:04d}"

    # -- Patients -----------------------------------------------------------------------------

    def patients(self, n: int) -> Iterator[Resource]:
        """`n` adult patients, `pat-000001` upwards, each with a distinct valid 身份证号."""
        issued: set[str] = set()
        for index in range(1, n + 1):
            yield self._patient(index, issued)

    def _patient(self, index: int, issued: set[str]) -> Resource:
        rng = self._rng("patient", index)
        male = rng.random() < 0.49
        lo, hi, _ = _AGE_BANDS[bisect.bisect_right(
            _AGE_BAND_CUM, rng.random() * _AGE_BAND_CUM[-1])]
        age = rng.randint(lo, hi)
        birth = AS_OF - timedelta(days=int((age + rng.random()) * 365.2425))
        region = BIRTHPLACES[bisect.bisect_right(_BIRTHPLACE_CUM,
                                                 rng.random() * _BIRTHPLACE_CUM[-1])][0]
        # 顺序码 parity is the sex. Identical region + birth + 顺序码 happens once in roughly
        # 10^8 draws; step to the next free 顺序码 of the same parity so numbers stay unique.
        sequence = rng.randrange(500) * 2 + 1 if male else rng.randrange(1, 500) * 2
        for _ in range(500):
            id_number = make_id(region, birth, sequence)
            if id_number not in issued:
                break
            sequence += 2
            if sequence > 999:
                sequence = 1 if male else 2
        else:
            raise ValueError(f"every 顺序码 for region {region} and birth date {birth} is taken")
        issued.add(id_number)

        ethnicity = "01"
        for code, share in _MINORITIES.get(region[:2], ()):
            if rng.random() < share:
                ethnicity = code
                break
        family, given, text = _chinese_name(rng, male, birth.year, ethnicity)
        area = HOME_AREAS[bisect.bisect_right(_AREA_CUM, rng.random() * _AREA_CUM[-1])]
        street = rng.choice(area.streets)
        if rng.random() < 0.8:
            line = (f"{street}{rng.randint(1, 200)}号院{rng.randint(1, 20)}号楼"
                    f"{rng.randint(1, 6)}单元{rng.randint(1, 28)}{rng.randint(1, 4):02d}室")
        else:
            line = f"{street}{rng.randint(1, 300)}号"
        city_part = area.city if area.city != area.state else ""
        marital = _marital_status(rng, age)
        m_display, v3_code, v3_display = _MARITAL[marital]
        patient: Resource = {
            "resourceType": "Patient",
            "id": f"pat-{index:06d}",
            "extension": [{"url": EXT_ETHNICITY, "valueCodeableConcept": {
                "coding": [_coding(CS_ETHNICITY, ethnicity, ETHNICITIES[ethnicity])]}}],
            "identifier": [
                {"use": "official",
                 "type": {"coding": [_coding(CS_ID_TYPE, "01", "居民身份证")]},
                 "system": OID_ID_CARD, "value": id_number},
                {"use": "usual",
                 "type": {"coding": [_coding(HL7_TERM + "v2-0203", "MR", "Medical record number")],
                          "text": "病案号"},
                 "system": OID_MRN, "value": f"{index + 400000:08d}",
                 "assigner": {"reference": ORG_REF}},
            ],
            "active": True,
            "name": [_human_name(family, given, text)],
            "telecom": [{"system": "phone", "use": "mobile",
                         "value": rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"}],
            "gender": "male" if male else "female",
            "_gender": {"extension": [{"url": EXT_SEX, "valueCoding": _coding(
                CS_SEX, "1" if male else "2", "男性" if male else "女性")}]},
            "birthDate": birth.isoformat(),
            "address": [{"use": "home", "type": "physical",
                         "text": f"{area.state}{city_part}{area.district}{line}",
                         "line": [line], "city": area.city, "district": area.district,
                         "state": area.state, "postalCode": area.postcode, "country": "CN"}],
            "maritalStatus": {"coding": [_coding(CS_MARITAL, marital, m_display),
                                         _coding(HL7_TERM + "v3-MaritalStatus", v3_code,
                                                 v3_display)],
                              "text": m_display},
            "managingOrganization": {"reference": ORG_REF},
        }
        return patient

    def _comorbidities(self, patient: Resource) -> tuple[Disease, ...]:
        """The chronic conditions this patient carries, fixed for the patient."""
        rng = self._rng("comorbidity", patient["id"])
        band = _age_band(_age(date.fromisoformat(patient["birthDate"]), AS_OF))
        return tuple(d for d in _CHRONIC if rng.random() < d.prevalence[band])[:3]

    # -- Encounters ---------------------------------------------------------------------------

    def encounters(self, patient: Resource, k: int) -> Iterator[Resource]:
        """`k` finished encounters in date order between 2024-01-01 (or the 18th birthday) and
        AS_OF; ids `enc-<patient>-01` upwards. Each carries its diagnosis as `reasonCode`."""
        if k < 1:
            raise ValueError(f"an encounter count must be at least 1, got {k}")
        pid = patient["id"]
        pnum = _seq(pid)
        rng = self._rng("encounter", pid)
        birth = date.fromisoformat(patient["birthDate"])
        comorbid = self._comorbidities(patient)
        start_day = max(WINDOW_START, _add_years(birth, 18))
        window = datetime(start_day.year, start_day.month, start_day.day, tzinfo=CST)
        # Admissions start at least a month before AS_OF so that even the longest stay (30
        # days) is over by then.
        slot = (AS_OF - start_day).days * 1440 / k - 31 * 1440 / k
        for j in range(1, k + 1):
            letter, act, act_display, type_code, type_display, _ = _CLASSES[
                bisect.bisect_right(_CLASS_CUM, rng.random() * _CLASS_CUM[-1])]
            day = window + timedelta(minutes=(j - 1) * slot + rng.random() * slot * 0.5)
            day = day.replace(hour=0, minute=0, second=0, microsecond=0)
            age = _age(birth, day.date())
            chronic_here = [d for d in comorbid if letter in d.classes]
            if letter == "A" and chronic_here and rng.random() < 0.5:
                disease = rng.choice(chronic_here)  # 复诊 for a known chronic condition
            else:
                pool, cum = _DISEASE_TABLES[letter, _age_band(age)]
                disease = pool[bisect.bisect_right(cum, rng.random() * cum[-1])]
            dept = EMERGENCY_DEPT if letter == "E" else DEPARTMENTS.index(disease.department)
            if letter == "A":
                start = day + timedelta(minutes=480 + rng.randrange(510))
                end = start + timedelta(minutes=rng.randint(40, 180))
            elif letter == "E":
                start = day + timedelta(minutes=rng.randrange(1440))
                end = start + timedelta(minutes=rng.randint(90, 600))
            else:
                stay = max(1, min(int(rng.lognormvariate(math.log(7.5), 0.45)), 30,
                                  int(slot * 0.4 / 1440)))
                start = day + timedelta(minutes=510 + rng.randrange(510))
                end = day + timedelta(days=stay, minutes=540 + rng.randrange(150))
            number = f"{start:%Y%m%d}{pnum}{j:02d}"
            encounter: Resource = {
                "resourceType": "Encounter",
                "id": f"enc-{pnum}-{j:02d}",
                "identifier": [
                    {"system": OID_INPATIENT_NO, "value": "ZY" + number} if letter == "I"
                    else {"system": OID_OUTPATIENT_NO,
                          "value": ("JZ" if letter == "E" else "MZ") + number}],
                "status": "finished",
                "class": _coding(ACT_CODE, act, act_display),
                "type": [{"coding": [_coding(CS_PATIENT_TYPE, type_code, type_display)]}],
                "serviceType": {"text": DEPARTMENTS[dept]},
                "subject": {"reference": f"Patient/{pid}"},
                "participant": [{
                    "type": [{"coding": [_coding(HL7_TERM + "v3-ParticipationType", "ATND",
                                                 "attender")]}],
                    "individual": {"reference": self._doctor_in(rng, dept)}}],
                "period": {"start": start.isoformat(), "end": end.isoformat()},
                "reasonCode": [{"coding": [{"system": CS_ICD10, "version": ICD10_VERSION,
                                            "code": disease.code, "display": disease.display}],
                                "text": disease.display}],
                "serviceProvider": {"reference": ORG_REF},
            }
            if letter == "I":
                stay_days = (end.date() - start.date()).days or 1
                route = rng.choices((("2", "门诊"), ("1", "急诊"), ("3", "其他医疗机构转入")),
                                    (60, 35, 5))[0]
                encounter["length"] = {"value": stay_days, "unit": "天", "system": UCUM,
                                       "code": "d"}
                encounter["hospitalization"] = {
                    "admitSource": {"coding": [_coding(CS_ADMIT_SOURCE, *route)]},
                    "dischargeDisposition": {"text": "医嘱离院" if rng.random() < 0.95
                                             else "医嘱转院"},
                }
            yield encounter

    # -- Conditions ---------------------------------------------------------------------------

    def conditions(self, patient: Resource, encounter: Resource) -> Iterator[Resource]:
        """The encounter's diagnoses: its reason first, then up to two known comorbidities.
        Ids are `cond-<patient>-<encounter no>-<n>`."""
        pid = patient["id"]
        primary = DISEASES_BY_CODE[encounter["reasonCode"][0]["coding"][0]["code"]]
        others = [d for d in self._comorbidities(patient) if d is not primary][:2]
        start = datetime.fromisoformat(encounter["period"]["start"])
        end = encounter["period"]["end"]
        birth = date.fromisoformat(patient["birthDate"])
        recorder = encounter["participant"][0]["individual"]
        for n, disease in enumerate((primary, *others), 1):
            rng = self._rng("onset", pid, disease.code)
            if disease.chronic:
                # One onset per patient and condition, before the first encounter it can be
                # coded in, so every encounter that lists it agrees on when it began.
                earliest = max(_add_years(birth, 18), _add_years(AS_OF, -16))
                latest = max(earliest, WINDOW_START - timedelta(days=30))
                first = earliest + timedelta(days=rng.randrange((latest - earliest).days + 1))
                onset = min(first, start.date()).isoformat()[:7]
            else:
                onset = (start.date() - timedelta(days=rng.randint(1, 7))).isoformat()
            resolved = not disease.chronic and encounter["class"]["code"] == "IMP"
            condition: Resource = {
                "resourceType": "Condition",
                "id": f"cond-{_seq(encounter['id'])}-{n}",
                "clinicalStatus": {"coding": [{
                    "system": HL7_TERM + "condition-clinical",
                    "code": "resolved" if resolved else "active"}]},
                "verificationStatus": {"coding": [{
                    "system": HL7_TERM + "condition-ver-status", "code": "confirmed"}]},
                "category": [{"coding": [_coding(HL7_TERM + "condition-category",
                                                 "encounter-diagnosis", "Encounter Diagnosis")]}],
                "code": {"coding": [{"system": CS_ICD10, "version": ICD10_VERSION,
                                     "code": disease.code, "display": disease.display}],
                         "text": disease.display},
                "subject": {"reference": f"Patient/{pid}"},
                "encounter": {"reference": f"Encounter/{encounter['id']}"},
                "onsetDateTime": onset,
                "recordedDate": encounter["period"]["start"],
                "recorder": dict(recorder),
            }
            if resolved:
                condition["abatementDateTime"] = end
            yield condition

    # -- Laboratory ---------------------------------------------------------------------------

    def lab_panel(self, patient: Resource, encounter: Resource, panel_name: str, *,
                  report_seq: int = 1, obs_seq: int = 1,
                  items: int | None = None) -> Iterator[Resource]:
        """One 检验 order: its Observations (`obs-<patient>-<obs_seq…>`) then the
        DiagnosticReport (`dr-<patient>-<report_seq>`) that groups them.

        `items` keeps only the first items of the panel (a partly performed order). Values
        follow the patient's sex and age and are pushed out of range by the encounter's
        diagnosis and the patient's chronic conditions.
        """
        panel = PANELS.get(panel_name)
        if panel is None:
            raise ValueError(f"unknown panel {panel_name!r}; known panels: {', '.join(PANELS)}")
        n = len(panel.items) if items is None else items
        if not 1 <= n <= len(panel.items):
            raise ValueError(f"items must be 1-{len(panel.items)} for {panel_name}, got {items}")
        pid, eid = patient["id"], encounter["id"]
        pnum = _seq(pid)
        rng = self._rng("lab", pid, eid, report_seq, panel.code)
        male = patient["gender"] == "male"
        start = datetime.fromisoformat(encounter["period"]["start"])
        end = datetime.fromisoformat(encounter["period"]["end"])
        age = _age(date.fromisoformat(patient["birthDate"]), start.date())

        effects: dict[str, float] = {}
        reason = DISEASES_BY_CODE.get(encounter["reasonCode"][0]["coding"][0]["code"])
        for disease in (*([reason] if reason else []), *self._comorbidities(patient)):
            for code, shift in disease.effects.items():
                effects[code] = effects.get(code, 0.0) + shift
        values = _sample_panel(rng, panel, male, age, effects)[:n]

        if encounter["class"]["code"] == "IMP" and (end - start).days >= 1:
            # Inpatient bloods are drawn on the early-morning round (晨间采血) of some day.
            day = rng.randrange(1, (end - start).days + 1)
            effective = (start + timedelta(days=day)).replace(hour=6, minute=0) + timedelta(
                minutes=rng.randrange(90))
        else:
            effective = start + (end - start) * rng.uniform(0.1, 0.5)
            effective = effective.replace(second=0, microsecond=0)
        issued = effective + timedelta(minutes=rng.randint(40, 150), seconds=rng.randrange(60))
        effective_s = effective.isoformat()
        issued_s = issued.isoformat()
        subject = f"Patient/{pid}"
        enc_ref = f"Encounter/{eid}"

        results: list[dict[str, str]] = []
        abnormal: list[str] = []
        for i, (a, value) in enumerate(values):
            lo, hi = a.interval(male, age)
            flag = "H" if value > hi else "L" if value < lo else "N"
            if flag != "N":
                abnormal.append(a.name + ("↑" if flag == "H" else "↓"))
            oid = f"obs-{pnum}-{obs_seq + i:04d}"
            results.append({"reference": "Observation/" + oid})
            yield {
                "resourceType": "Observation",
                "id": oid,
                "status": "final",
                "category": [{"coding": [{"system": HL7_TERM + "observation-category",
                                          "code": "laboratory", "display": "Laboratory"}]}],
                "code": {"coding": [{"system": LOINC, "code": a.loinc, "display": a.loinc_display},
                                    {"system": LIS_ITEM_SYSTEM, "code": a.code, "display": a.name}],
                         "text": a.name},
                "subject": {"reference": subject},
                "encounter": {"reference": enc_ref},
                "effectiveDateTime": effective_s,
                "issued": issued_s,
                "valueQuantity": {"value": value, "unit": a.unit, "system": UCUM, "code": a.ucum},
                "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag,
                                                "display": _FLAG_DISPLAY[flag]}]}],
                "referenceRange": [{
                    "low": {"value": lo, "unit": a.unit, "system": UCUM, "code": a.ucum},
                    "high": {"value": hi, "unit": a.unit, "system": UCUM, "code": a.ucum},
                    "text": f"{lo}-{hi}"}],
            }
        lab_doctor = self._doctor_in(rng, LAB_DEPT)
        yield {
            "resourceType": "DiagnosticReport",
            "id": f"dr-{pnum}-{report_seq:04d}",
            "identifier": [{"system": OID_LAB_REPORT_NO,
                            "value": f"{effective:%Y%m%d}{pnum}{report_seq:04d}"}],
            "status": "final",
            "category": [{"coding": [_coding(HL7_TERM + "v2-0074", "LAB", "Laboratory")]}],
            "code": {"coding": [_coding(LOINC, panel.loinc, panel.loinc_display),
                                _coding(LIS_PANEL_SYSTEM, panel.code, panel.name)],
                     "text": panel.name},
            "subject": {"reference": subject},
            "encounter": {"reference": enc_ref},
            "effectiveDateTime": effective_s,
            "issued": issued_s,
            "performer": [{"reference": ORG_REF}],
            "resultsInterpreter": [{"reference": lab_doctor}],
            "result": results,
            "conclusion": "，".join(abnormal) if abnormal else "所检项目未见异常",
        }

    # -- Everything ---------------------------------------------------------------------------

    def population(self, patients: int, observations_per_patient: int) -> Iterator[Resource]:
        """The whole population in dependency order: Organization, Practitioners, then per
        patient the Patient, its Encounters, Conditions, and each lab order's Observations
        followed by its DiagnosticReport.

        Exactly `observations_per_patient` Observations per patient: orders are drawn (血常规
        most often) and spread over the patient's encounters; the last one is cut short if
        the count falls inside it.
        """
        if observations_per_patient < 0:
            raise ValueError("observations_per_patient must not be negative")
        yield self.organization()
        yield from self.practitioners()
        for patient in self.patients(patients):
            yield patient
            rng = self._rng("plan", patient["id"])
            k = rng.choices((1, 2, 3, 4), (40, 30, 20, 10))[0]
            encounters = list(self.encounters(patient, k))
            yield from encounters
            for encounter in encounters:
                yield from self.conditions(patient, encounter)
            remaining, obs_seq, report_seq = observations_per_patient, 1, 1
            while remaining > 0:
                panel = _PANEL_ORDER[bisect.bisect_right(_PANEL_CUM, rng.random() * _PANEL_CUM[-1])]
                size = min(len(panel.items), remaining)
                yield from self.lab_panel(patient, encounters[(report_seq - 1) % k], panel.name,
                                          report_seq=report_seq, obs_seq=obs_seq, items=size)
                remaining -= size
                obs_seq += size
                report_seq += 1





# ---------------------------------------------------------------------------------------------
# Transaction Bundles (FHIR R4 §3.1.0.11 batch/transaction)
# ---------------------------------------------------------------------------------------------

# Fixed so the same resources always get the same urn:uuid fullUrls (reproducible bundles).
_UUID_NAMESPACE = uuid.UUID("6f1b2a9e-3c4d-5e6f-8a7b-9c0d1e2f3a4b")


def transaction_bundle(resources: Iterable[Resource], *, method: Literal["PUT", "POST"] = "PUT",
                       base_url: str | None = None) -> Resource:
    """A `transaction` Bundle of the resources.

    PUT: each entry is an update-as-create at `Type/id`, so ids and references stay as they are;
    with `base_url`, entries also get the absolute fullUrl. POST: ids are dropped, each entry
    gets a `urn:uuid:` fullUrl, and every `Type/id` reference to a resource in the bundle is
    rewritten to that urn, as the server assigns the real ids (§3.1.0.11.2). References to
    resources outside the bundle are left alone. The input dicts are never modified.
    """
    items = list(resources)
    keys: list[str] = []
    for n, resource in enumerate(items):
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str) or not rtype or not rid:
            raise ValueError(f"resource {n} needs a resourceType and an id to go in a transaction")
        keys.append(f"{rtype}/{rid}")
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{key} appears twice; a transaction may touch a resource only once")
        seen.add(key)

    entries: list[Resource] = []
    if method == "PUT":
        for key, resource in zip(keys, items, strict=True):
            entry: Resource = {"resource": resource, "request": {"method": "PUT", "url": key}}
            if base_url:
                entry = {"fullUrl": f"{base_url.rstrip('/')}/{key}", **entry}
            entries.append(entry)
    elif method == "POST":
        urns = {key: f"urn:uuid:{uuid.uuid5(_UUID_NAMESPACE, key)}" for key in keys}
        for key, resource in zip(keys, items, strict=True):
            body = {k: _rewrite_references(v, urns) for k, v in resource.items() if k != "id"}
            entries.append({"fullUrl": urns[key], "resource": body,
                            "request": {"method": "POST", "url": resource["resourceType"]}})
    else:
        raise ValueError(f"method must be 'PUT' or 'POST', got {method!r}")

    bundle: Resource = {"resourceType": "Bundle", "type": "transaction"}
    if entries:
        bundle["entry"] = entries
    return bundle


def _rewrite_references(node: Any, urns: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: urns.get(v, v) if k == "reference" and isinstance(v, str)
                else _rewrite_references(v, urns) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_references(v, urns) for v in node]
    return node

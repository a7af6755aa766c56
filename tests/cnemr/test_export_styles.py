"""The shipped export styles of every dataset import the same hospital to the same FHIR content.

Each dataset ships three mapping files: `<dataset>-ws363.yaml` (columns named by the WS 363 data
elements), `<dataset>-shouye.yaml` (pinyin initials, as 首页 / 医保 uploads write them) and
`<dataset>-his.yaml` (lower-case pinyin HIS tables). For each dataset one small hospital is
written down once as facts, rendered as an export file in each style the way that style's
systems write values (codes or words, YYYYMMDD or YYYY-MM-DD hh:mm:ss.000, UTF-8 or GBK), and
imported into three fresh stores; the stores must then hold identical resources.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from app.cnemr.context import (
    Hospital,
    outpatient_visit_key,
    registration_fee_resource_id,
)
from app.cnemr.datasets import DATASETS
from app.cnemr.importer import DATA_ELEMENTS
from app.cnemr.mapping import load_mapping
from app.samples.identity import make_id
from tests.cnemr.exports import MAPPINGS, import_export, without_version, write_csv

HOSPITAL = Hospital("2.16.156.10011.1.5.110000001")
STYLES = ("ws363", "shouye", "his")

Fact = dict[str, Any]
Cell = Callable[[Fact], str]

# How each style writes dates and times.
D8 = "%Y%m%d"  # WS 363 D8
TS = "%Y%m%d%H%M%S"  # HL7 v3 TS, as WS/T 500 CDA documents write a time
DAY = "%Y-%m-%d"
MINUTE = "%Y-%m-%d %H:%M"
SECOND = "%Y-%m-%d %H:%M:%S"
SQL = "%Y-%m-%d %H:%M:%S.000"  # SQL Server datetime dumped as text
SLASH = "%Y/%m/%d %H:%M:%S"


def text(key: str) -> Cell:
    return lambda fact: str(fact.get(key) or "")


def when(key: str, form: str) -> Cell:
    return lambda fact: fact[key].strftime(form) if fact.get(key) else ""


def word(key: str, table: dict[str, str]) -> Cell:
    """The value as this style writes it instead of the standard code."""
    return lambda fact: table[fact[key]] if fact.get(key) else ""


@dataclass(frozen=True)
class Style:
    mapping: str  # file in app/cnemr/mappings/
    file_name: str
    encoding: str
    columns: dict[str, Cell]  # column → how this style writes it from a fact

    def write(self, folder: Path, facts: list[Fact]) -> Path:
        return write_csv(folder / self.file_name, list(self.columns),
                         [[cell(fact) for cell in self.columns.values()] for fact in facts],
                         self.encoding)


def lines(groups: list[Fact], key: str) -> list[Fact]:
    """One fact per export row: each line of a group with the group's own facts repeated."""
    return [{**{k: v for k, v in group.items() if k != key}, **line} for group in groups
            for line in group[key]]


# -- 检验报告: a 血常规 with a high and a low count, a 肝功能 with a raised ALT; each with its
# 申请单 and tube (全血 / 血清), the 肝功能 申请单 without a time

LAB = lines([
    {"report": "JY20261120001", "patient": "BA100231", "specimen": "2611200017",
     "panel_code": "XCG", "panel": "血常规", "specimen_type": "全血", "order": "SQ2611200153",
     "orderer": "李卫东", "ordered": datetime(2026, 11, 20, 7, 40, 5),
     "collected": datetime(2026, 11, 20, 7, 52),
     "tested": datetime(2026, 11, 20, 8, 40, 15), "reported": datetime(2026, 11, 20, 10, 5),
     "dept": "检验科", "doctor": "赵丽华", "items": [
         {"item": "WBC", "name": "白细胞计数", "result": "11.2", "unit": "×10^9/L",
          "range": "3.5-9.5", "flag": "H"},
         {"item": "HGB", "name": "血红蛋白", "result": "135", "unit": "g/L",
          "range": "130-175", "flag": "N"},
         {"item": "PLT", "name": "血小板计数", "result": "86", "unit": "×10^9/L",
          "range": "125-350", "flag": "L"}]},
    {"report": "JY20261120002", "patient": "BA100232", "specimen": "2611200018",
     "panel_code": "GGN", "panel": "肝功能", "specimen_type": "血清", "order": "SQ2611200160",
     "orderer": "王志强", "collected": datetime(2026, 11, 20, 8, 3),
     "tested": datetime(2026, 11, 20, 9, 12, 40), "reported": datetime(2026, 11, 20, 11, 30),
     "dept": "检验科", "doctor": "赵丽华", "items": [
         {"item": "ALT", "name": "丙氨酸氨基转移酶", "result": "56", "unit": "U/L",
          "range": "7-40", "flag": "H"},
         {"item": "AST", "name": "天门冬氨酸氨基转移酶", "result": "32", "unit": "U/L",
          "range": "13-35", "flag": "N"},
         {"item": "TBIL", "name": "总胆红素", "result": "15.3", "unit": "μmol/L",
          "range": "3.4-20.5", "flag": "N"}]},
], "items")

LAB_STYLES = (
    Style("lab-ws363.yaml", "检验报告.csv", "utf-8", {
        "检验报告单号": text("report"), "患者ID": text("patient"), "标本编号": text("specimen"),
        "检验组合代码": text("panel_code"), "检验组合名称": text("panel"),
        "检验项目代码": text("item"), "检验项目名称": text("name"), "检验结果": text("result"),
        "计量单位": text("unit"), "参考值范围": text("range"), "异常标志": text("flag"),
        "标本采样日期时间": when("collected", TS), "检验日期时间": when("tested", TS),
        "报告日期时间": when("reported", TS), "检验科室名称": text("dept"),
        "报告医师签名": text("doctor"), "标本类别": text("specimen_type"),
        "电子申请单编号": text("order"), "申请医师签名": text("orderer"),
        "申请日期时间": when("ordered", TS)}),
    Style("lab-shouye.yaml", "jybg.csv", "gbk", {
        "JYBGDH": text("report"), "BAH": text("patient"), "BBBH": text("specimen"),
        "ZHDM": text("panel_code"), "ZHMC": text("panel"), "XMDM": text("item"),
        "XMMC": text("name"), "JYJG": text("result"), "DW": text("unit"), "CKFW": text("range"),
        "YCBZ": word("flag", {"H": "偏高", "L": "偏低", "N": "正常"}),
        "CYSJ": when("collected", SECOND), "JYSJ": when("tested", SECOND),
        "BGSJ": when("reported", SECOND), "JYKS": text("dept"), "BGYS": text("doctor"),
        "BBLX": text("specimen_type"), "SQDH": text("order"), "SQYS": text("orderer"),
        "SQSJ": when("ordered", SECOND)}),
    Style("lab-his.yaml", "lis_jyjg.csv", "gb18030", {
        "bgdh": text("report"), "patid": text("patient"), "bbh": text("specimen"),
        "zhdm": text("panel_code"), "zhmc": text("panel"), "xmdm": text("item"),
        "xmmc": text("name"), "jg": text("result"), "dw": text("unit"), "ckfw": text("range"),
        "bz": word("flag", {"H": "↑", "L": "↓", "N": "正常"}),
        "cysj": when("collected", SQL), "jysj": when("tested", SQL), "bgsj": when("reported", SQL),
        "ks": text("dept"), "bgys": text("doctor"), "bblx": text("specimen_type"),
        "sqdh": text("order"), "sqys": text("orderer"), "sqsj": when("ordered", SQL)}),
)

# -- 挂号: 门诊号 0087 is given out again the next day; one 急诊 registration is not seen yet

VISITS = [
    {"no": "0087", "registered": datetime(2026, 11, 20, 7, 58, 12),
     "seen": datetime(2026, 11, 20, 8, 31), "patient": "BA100231", "type": "1",
     "dept": "心血管内科门诊", "doctor": "李卫东", "dx": "I10.x00x002", "dx_name": "原发性高血压",
     "fee": "10.00"},
    {"no": "0012", "registered": datetime(2026, 11, 20, 22, 41, 5), "patient": "BA100232",
     "type": "2", "dept": "急诊科", "fee": "15.00"},
    {"no": "0087", "registered": datetime(2026, 11, 21, 8, 5, 40),
     "seen": datetime(2026, 11, 21, 9, 12), "patient": "BA100233", "type": "1",
     "dept": "中医内科门诊", "doctor": "周慧敏", "dx": "J06.900", "dx_name": "急性上呼吸道感染",
     "fee": "20.00"},
]

VISIT_STYLES = (
    Style("visit-ws363.yaml", "门急诊就诊记录.csv", "utf-8", {
        "门(急)诊号": text("no"), "挂号日期时间": when("registered", TS),
        "就诊日期时间": when("seen", TS), "患者ID": text("patient"), "患者类型代码": text("type"),
        "就诊科室名称": text("dept"), "接诊医师姓名": text("doctor"), "西医诊断编码": text("dx"),
        "西医诊断名称": text("dx_name"), "挂号费": text("fee")}),
    Style("visit-shouye.yaml", "mzgh.csv", "gbk", {
        "MZH": text("no"), "GHSJ": when("registered", SECOND), "JZSJ": when("seen", SECOND),
        "BAH": text("patient"), "JZLX": word("type", {"1": "普通门诊", "2": "急诊"}),
        "KSMC": text("dept"), "YSXM": text("doctor"), "ZDDM": text("dx"), "ZDMC": text("dx_name"),
        "GHF": text("fee")}),
    Style("visit-his.yaml", "mz_gh.csv", "gb18030", {
        "mzh": text("no"), "ghrq": when("registered", SQL), "jzsj": when("seen", SQL),
        "patid": text("patient"), "mjzbz": word("type", {"1": "门诊", "2": "急诊"}),
        "ks": text("dept"), "ys": text("doctor"), "zdicd10": text("dx"), "zdmc": text("dx_name"),
        "ghf": text("fee")}),
)

# -- 处方: a 西药处方 of the first 0087 visit and a 中药处方 (7付, 水煎服) of the second, both
# dispensed, the 中药处方 without a 发药药师

PRESCRIPTIONS = lines([
    {"no": "CF202611200031", "patient": "BA100231", "visit": "0087", "day": date(2026, 11, 20),
     "written": datetime(2026, 11, 20, 8, 45, 30), "doctor": "李卫东", "kind": "1",
     "dispensed": "1", "handed_over": datetime(2026, 11, 20, 9, 2, 41), "pharmacist": "孙晓梅",
     "lines": [
         {"line": "1", "code": "Y0103045", "nhsa": "XC08CAN136A001010101446",
          "name": "硝苯地平控释片", "spec": "30mg×7片", "dose": "30", "dose_unit": "mg",
          "freq": "9", "route": "1", "qty": "7", "qty_unit": "片", "days": "7", "group": "1"},
         {"line": "2", "code": "Y0201187", "nhsa": "XA10BAM069A010010101445",
          "name": "盐酸二甲双胍缓释片", "spec": "0.5g×30片", "dose": "0.5", "dose_unit": "g",
          "freq": "1", "route": "1", "qty": "14", "qty_unit": "片", "days": "7", "group": "2"}]},
    {"no": "CF202611210007", "patient": "BA100233", "visit": "0087", "day": date(2026, 11, 21),
     "written": datetime(2026, 11, 21, 9, 30, 2), "doctor": "周慧敏", "kind": "2",
     "dispensed": "1", "handed_over": datetime(2026, 11, 21, 10, 15, 9), "doses": "7",
     "decoction": "水煎服", "lines": [
         {"line": "1", "code": "ZY0101", "name": "黄芪", "dose": "30", "dose_unit": "g",
          "freq": "1", "route": "1", "qty": "210", "qty_unit": "g", "days": "7"},
         {"line": "2", "code": "ZY0233", "name": "丹参", "dose": "15", "dose_unit": "g",
          "freq": "1", "route": "1", "qty": "105", "qty_unit": "g", "days": "7"},
         {"line": "3", "code": "ZY0145", "name": "川芎", "dose": "10", "dose_unit": "g",
          "freq": "1", "route": "1", "qty": "70", "qty_unit": "g", "days": "7"}]},
], "lines")
PRESCRIPTION_STYLES = (
    Style("prescription-ws363.yaml", "门急诊处方.csv", "utf-8", {
        "处方编号": text("no"), "患者ID": text("patient"), "门(急)诊号": text("visit"),
        "就诊日期": when("day", D8), "处方开立日期时间": when("written", TS),
        "处方开立医师签名": text("doctor"), "处方类别代码": text("kind"),
        "发药标志": text("dispensed"), "中药饮片剂数": text("doses"),
        "中药饮片煎煮法": text("decoction"), "处方明细序号": text("line"),
        "药品代码": text("code"), "国家医保药品编码": text("nhsa"), "药物名称": text("name"),
        "药物规格": text("spec"), "药物使用次剂量": text("dose"),
        "药物使用剂量单位": text("dose_unit"), "药物使用频次代码": text("freq"),
        "用药途径代码": text("route"), "药物发药数量": text("qty"),
        "药物发药数量单位": text("qty_unit"), "用药天数": text("days"), "组号": text("group"),
        "发药日期时间": when("handed_over", TS), "处方发药药剂师签名": text("pharmacist")}),
    Style("prescription-shouye.yaml", "cf.csv", "gbk", {
        "CFBH": text("no"), "BAH": text("patient"), "MZH": text("visit"),
        "JZRQ": when("day", DAY), "KFSJ": when("written", SECOND), "KFYS": text("doctor"),
        "CFLB": text("kind"), "FYBZ": text("dispensed"), "ZYFS": text("doses"),
        "JZFS": text("decoction"), "MXXH": text("line"), "YPDM": text("code"),
        "YBBM": text("nhsa"), "YPMC": text("name"), "GG": text("spec"), "MCJL": text("dose"),
        "JLDW": text("dose_unit"), "YF": word("route", {"1": "口服"}),
        "PC": word("freq", {"1": "每日两次", "9": "每日一次"}), "SL": text("qty"),
        "DW": text("qty_unit"), "TS": text("days"), "ZH": text("group"),
        "FYSJ": when("handed_over", SECOND), "FYYS": text("pharmacist")}),
    # No 就诊日期 column: the HIS dates the visit by the 开方日期.
    Style("prescription-his.yaml", "xt_dzcfmx.csv", "gb18030", {
        "cfh": text("no"), "patid": text("patient"), "mzh": text("visit"),
        "kfrq": when("written", SQL), "ysxm": text("doctor"),
        "cflx": word("kind", {"1": "西药", "2": "中药"}), "fybz": word("dispensed", {"1": "是"}),
        "fs": text("doses"), "jzfs": text("decoction"), "xh": text("line"),
        "ypCode": text("code"), "ybbm": text("nhsa"), "ypmc": text("name"), "gg": text("spec"),
        "mcjl": text("dose"), "mcjldw": text("dose_unit"), "yfCode": word("route", {"1": "01"}),
        "pcCode": word("freq", {"1": "bid", "9": "qd"}), "sl": text("qty"),
        "dw": text("qty_unit"), "ts": text("days"), "zh": text("group"),
        "fysj": when("handed_over", SQL), "fyys": text("pharmacist")}),
)

# -- 住院病案首页: an acute MI with PCI, and a 中医首页 (胸痹心痛病, 气虚血瘀证)

HOMEPAGES = [
    {"bah": "BA100231", "zyh": "ZY20261012", "count": "2", "name": "张建国", "sex": "1",
     "birth": date(1962, 3, 14), "id_type": "01", "card": make_id("110105", date(1962, 3, 14), 31),
     "eth": "01", "marital": "20", "pay": "01", "route": "1",
     "admitted": datetime(2026, 10, 12, 14, 20), "in_dept": "心血管内科",
     "discharged": datetime(2026, 10, 19, 9, 30), "out_dept": "心血管内科", "days": "7",
     "leave": "1", "attending": "李卫东",
     "dx": "I21.000", "dx_name": "急性心肌梗死", "dx_cond": "1",
     "dx1": "I10.x00x002", "dx1_name": "原发性高血压", "dx1_cond": "1",
     "dx2": "E11.900", "dx2_name": "2型糖尿病", "dx2_cond": "1",
     "op1": "00.6601", "op1_name": "经皮冠状动脉腔内血管成形术[PTCA]",
     "op1_at": datetime(2026, 10, 12, 16, 5), "op1_level": "3", "op1_anaesthesia": "3",
     "op1_surgeon": "王志强", "abo": "1", "rh": "2",
     "total": "58632.47", "self_paid": "12034.50", "western": "8421.36", "surgery": "3200.00",
     "laboratory": "2150.00"},
    {"bah": "BA100452", "zyh": "ZY20260903", "count": "1", "name": "欧阳秀英", "sex": "2",
     "birth": date(1955, 7, 8), "id_type": "01", "card": make_id("440106", date(1955, 7, 8), 42),
     "eth": "01", "marital": "30", "pay": "02", "route": "2",
     "admitted": datetime(2026, 9, 3, 10, 0), "in_dept": "中医内科",
     "discharged": datetime(2026, 9, 15, 9, 0), "out_dept": "中医内科", "days": "12",
     "leave": "1", "attending": "周慧敏",
     "dx": "I20.000", "dx_name": "不稳定型心绞痛", "dx_cond": "2",
     "tcm": "A04.01.01", "tcm_name": "胸痹心痛病", "syndrome": "B04.03.02.01",
     "syndrome_name": "气虚血瘀证", "abo": "3", "rh": "4",
     "total": "21430.10", "self_paid": "4286.02", "nursing": "860.00", "herbal": "1865.40"},
]
CONDITION_WORDS = {"1": "有", "2": "临床未确定", "3": "情况不明", "4": "无"}


def homepage_columns(names: dict[str, str], day: str, stamp: str,
                     writes: dict[str, dict[str, str]]) -> dict[str, Cell]:
    """The columns of a 首页 style: its name for each fact (key → column), its date and time
    forms, and for the facts it does not write as the standard code, what it writes instead."""
    def coded(key: str) -> Cell:
        return word(key, writes[key]) if key in writes else text(key)

    dates = {"birth": day, "admitted": stamp, "discharged": stamp, "op1_at": stamp}
    return {column: when(key, dates[key]) if key in dates else coded(key)
            for key, column in names.items()}


# What the 首页 upload writes in place of the WS 364 code (the 2011 form's one-digit codes).
SHOUYE_WRITES = {"marital": {"20": "2", "30": "3"}, "pay": {"01": "1", "02": "2"}}
# What the HIS writes in place of the WS 364 code: words.
HIS_WRITES = {
    "sex": {"1": "男", "2": "女"}, "id_type": {"01": "居民身份证"}, "eth": {"01": "汉族"},
    "marital": {"20": "已婚", "30": "丧偶"},
    "pay": {"01": "城镇职工基本医疗保险", "02": "城镇居民基本医疗保险"},
    "route": {"1": "急诊", "2": "门诊"}, "leave": {"1": "医嘱离院"},
    **{f"{dx}_cond": CONDITION_WORDS for dx in ("dx", "dx1", "dx2")},
    "op1_level": {"3": "三级"}, "op1_anaesthesia": {"3": "局部麻醉"},
    "abo": {"1": "A", "3": "O"}, "rh": {"2": "阳性", "4": "未查"}}


HOMEPAGE_STYLES = (
    Style("homepage-ws363.yaml", "住院病案首页.csv", "utf-8", homepage_columns({
        "bah": "病案号", "zyh": "住院号", "count": "住院次数", "name": "姓名", "sex": "性别代码",
        "birth": "出生日期", "id_type": "身份证件类别代码", "card": "身份证件号码", "eth": "民族",
        "marital": "婚姻状况代码", "pay": "医疗付费方式代码", "route": "入院途径代码",
        "admitted": "入院日期时间", "in_dept": "入院科别", "discharged": "出院日期时间",
        "out_dept": "出院科别", "days": "实际住院天数", "leave": "离院方式代码",
        "attending": "主治医师签名", "dx": "出院诊断-主要诊断编码",
        "dx_name": "出院诊断-主要诊断名称", "dx_cond": "出院诊断-主要诊断入院病情代码",
        "dx1": "出院诊断-其他诊断编码1", "dx1_name": "出院诊断-其他诊断名称1",
        "dx1_cond": "出院诊断-其他诊断入院病情代码1", "dx2": "出院诊断-其他诊断编码2",
        "dx2_name": "出院诊断-其他诊断名称2", "dx2_cond": "出院诊断-其他诊断入院病情代码2",
        "op1": "手术及操作编码1", "op1_name": "手术及操作名称1", "op1_at": "手术及操作日期1",
        "op1_level": "手术级别代码1", "op1_anaesthesia": "麻醉方式代码1",
        "op1_surgeon": "手术者姓名1", "abo": "ABO血型代码", "rh": "Rh血型代码",
        "tcm": "出院中医诊断-主病编码", "tcm_name": "出院中医诊断-主病名称",
        "syndrome": "出院中医诊断-主证编码", "syndrome_name": "出院中医诊断-主证名称",
        "total": "住院总费用", "self_paid": "住院总费用-自付金额",
        "nursing": "综合医疗服务类-护理费", "laboratory": "诊断类-实验室诊断费",
        "surgery": "治疗类-手术治疗费-手术费", "western": "西药类-西药费",
        "herbal": "中药类-中草药费"}, D8, TS, {})),
    Style("homepage-shouye.yaml", "basy.csv", "gbk", homepage_columns({
        "bah": "BAH", "zyh": "ZYH", "count": "ZYCS", "name": "XM", "sex": "XB", "birth": "CSRQ",
        "id_type": "ZJLX", "card": "SFZH", "eth": "MZ", "marital": "HY", "pay": "YLFKFS",
        "route": "RYTJ", "admitted": "RYSJ", "in_dept": "RYKB", "discharged": "CYSJ",
        "out_dept": "CYKB", "days": "SJZYTS", "leave": "LYFS", "attending": "ZZYS",
        "dx": "JBDM", "dx_name": "ZYZD", "dx_cond": "RYBQ", "dx1": "JBDM1", "dx1_name": "QTZD1",
        "dx1_cond": "RYBQ1", "dx2": "JBDM2", "dx2_name": "QTZD2", "dx2_cond": "RYBQ2",
        "op1": "SSJCZBM1", "op1_name": "SSJCZMC1", "op1_at": "SSJCZRQ1", "op1_level": "SSJB1",
        "op1_anaesthesia": "MZFS1", "op1_surgeon": "SZ1", "abo": "XX", "rh": "RH",
        "tcm": "ZBBM", "tcm_name": "ZBMC", "syndrome": "ZZBM", "syndrome_name": "ZZMC",
        "total": "ZFY", "self_paid": "ZFJE", "nursing": "HLF", "laboratory": "SYSZDF",
        "surgery": "SSF", "western": "XYF", "herbal": "ZCYF1"}, DAY, MINUTE, SHOUYE_WRITES)),
    Style("homepage-his.yaml", "ba_syxx.csv", "gb18030", homepage_columns({
        "bah": "bah", "zyh": "zyh", "count": "zycs", "name": "xm", "sex": "xb", "birth": "csrq",
        "id_type": "zjlx", "card": "sfzh", "eth": "mz", "marital": "hyzk", "pay": "fkfs",
        "route": "rytj", "admitted": "rysj", "in_dept": "rykb", "discharged": "cysj",
        "out_dept": "cykb", "days": "sjzyts", "leave": "lyfs", "attending": "zzys",
        "dx": "zyzdbm", "dx_name": "zyzd", "dx_cond": "zyzdrybq", "dx1": "qtzdbm1",
        "dx1_name": "qtzd1", "dx1_cond": "qtzdrybq1", "dx2": "qtzdbm2", "dx2_name": "qtzd2",
        "dx2_cond": "qtzdrybq2", "op1": "ssbm1", "op1_name": "ssmc1", "op1_at": "ssrq1",
        "op1_level": "ssjb1", "op1_anaesthesia": "mzfs1", "op1_surgeon": "sz1", "abo": "xx",
        "rh": "rh", "tcm": "zybm", "tcm_name": "zymc", "syndrome": "zzbm",
        "syndrome_name": "zzmc", "total": "zfy", "self_paid": "zfje", "nursing": "hlf",
        "laboratory": "syszdf", "surgery": "ssf", "western": "xyf", "herbal": "zcyyf"},
        "%Y-%m-%d 00:00:00.000", SQL, HIS_WRITES)),
)

# -- 结算: two 门诊 settlements of the two 0087 visits, 城镇职工 and 城乡居民, with the 医保 split

SETTLEMENTS = lines([
    # 100.00 元: 统筹 60.00 + 个人账户 30.00 + 现金 10.00; the patient's 40.00 is 自付 30 + 自费 10.
    {"id": "JS202611200153", "patient": "BA100231", "visit": "0087", "day": date(2026, 11, 20),
     "invoice": "0012611200153", "settled": datetime(2026, 11, 20, 10, 42, 17),
     "insurance_no": "110000G202611201042170153", "insurance": "1", "total": "100.00",
     "fund": "60.00", "account": "30.00", "cash": "10.00", "copay": "30.00",
     "self_pay": "10.00", "items": [
         {"item": "110200001", "item_name": "普通门诊挂号费", "category": "挂号费",
          "price": "10.00", "qty": "1", "amount": "10.00"},
         {"item": "Y0103045", "item_name": "硝苯地平控释片 30mg×7片", "category": "西药费",
          "price": "32.50", "qty": "2", "amount": "65.00"},
         {"item": "250101015", "item_name": "血常规(五分类)", "category": "化验费",
          "price": "25.00", "qty": "1", "amount": "25.00"}]},
    # 87.20 元: 统筹 30.00 + 个人账户 0.00 + 现金 57.20 = 自付 47.20 + 自费 10.00.
    {"id": "JS202611210021", "patient": "BA100233", "visit": "0087", "day": date(2026, 11, 21),
     "invoice": "0012611210021", "settled": datetime(2026, 11, 21, 9, 58, 3),
     "insurance_no": "110000G202611210958030021", "insurance": "2", "total": "87.20",
     "fund": "30.00", "account": "0.00", "cash": "57.20", "copay": "47.20",
     "self_pay": "10.00", "items": [
         {"item": "110200002", "item_name": "副主任医师门诊诊查费", "category": "挂号费",
          "price": "20.00", "qty": "1", "amount": "20.00"},
         {"item": "ZY0101", "item_name": "黄芪", "category": "中药饮片费", "price": "0.12",
          "qty": "210", "amount": "25.20"},
         {"item": "ZY0233", "item_name": "丹参", "category": "中药饮片费", "price": "0.20",
          "qty": "105", "amount": "21.00"},
         {"item": "ZY0145", "item_name": "川芎", "category": "中药饮片费", "price": "0.30",
          "qty": "70", "amount": "21.00"}]},
], "items")

BILLING_STYLES = (
    Style("billing-ws363.yaml", "结算明细.csv", "utf-8", {
        "结算ID": text("id"), "患者ID": text("patient"), "门(急)诊号": text("visit"),
        "就诊日期": when("day", D8), "发票号码": text("invoice"),
        "结算日期时间": when("settled", TS), "医保结算流水号": text("insurance_no"),
        "收费项目编码": text("item"), "收费项目名称": text("item_name"),
        "收费项目类别": text("category"), "单价": text("price"), "数量": text("qty"),
        "金额": text("amount"), "结算总金额": text("total"), "统筹基金支付金额": text("fund"),
        "个人账户支付金额": text("account"), "现金支付金额": text("cash"),
        "个人自付金额": text("copay"), "个人自费金额": text("self_pay"),
        "医疗保险类别代码": text("insurance")}),
    Style("billing-shouye.yaml", "ybjsqd.csv", "gbk", {
        "JSID": text("id"), "BAH": text("patient"), "MZH": text("visit"),
        "JZRQ": when("day", DAY), "FPH": text("invoice"), "JSSJ": when("settled", SECOND),
        "YBJSLSH": text("insurance_no"), "XMBM": text("item"), "XMMC": text("item_name"),
        "SFLB": word("category", {"挂号费": "13", "西药费": "09", "化验费": "04",
                                  "中药饮片费": "10"}),
        "DJ": text("price"), "SL": text("qty"), "JE": text("amount"), "ZFY": text("total"),
        "TCZF": text("fund"), "GRZHZF": text("account"), "XJZF": text("cash"),
        "ZFJE": text("copay"), "ZFEI": text("self_pay"),
        "XZLX": word("insurance", {"1": "310", "2": "390"})}),
    Style("billing-his.yaml", "mz_js.csv", "gb18030", {
        "jsid": text("id"), "patid": text("patient"), "mzh": text("visit"),
        "jzrq": when("day", "%Y/%m/%d"), "fph": text("invoice"), "jsrq": when("settled", SLASH),
        "ybjslsh": text("insurance_no"), "xmbm": text("item"), "xmmc": text("item_name"),
        "sfdl": text("category"), "dj": text("price"), "sl": text("qty"), "je": text("amount"),
        "zje": text("total"), "tczf": text("fund"), "grzhzf": text("account"),
        "xjzf": text("cash"), "zfje": text("copay"), "zfei": text("self_pay"),
        "yblx": word("insurance", {"1": "职工医保", "2": "居民医保"})}),
)

# -- 科室与医务人员: one 科室 with a 主任医师, a 副主任医师 and a 主治医师

STAFF = [
    {"hospital": "北京市朝阳区第三人民医院", "dept": "0301", "dept_name": "心血管内科",
     "no": no, "name": name, "title": title, "licence": licence,
     "card": make_id(region, born, seq)}
    for no, name, title, licence, region, born, seq in (
        ("100213", "李卫东", "231", "110110105000213", "110105", date(1968, 4, 2), 17),
        ("100457", "王志强", "232", "110110105000457", "130102", date(1975, 9, 21), 55),
        ("100981", "陈静", "233", "110110105000981", "410105", date(1986, 1, 30), 64))]
TITLES = {"231": "主任医师", "232": "副主任医师", "233": "主治医师"}

STAFF_STYLES = (
    Style("staff-ws363.yaml", "医务人员.csv", "utf-8", {
        "医疗机构名称": text("hospital"), "科室代码": text("dept"), "科室名称": text("dept_name"),
        "医务人员工号": text("no"), "医务人员姓名": text("name"), "专业技术职务代码": text("title"),
        "医师执业证书编码": text("licence"), "身份证件号码": text("card")}),
    Style("staff-shouye.yaml", "ysxx.csv", "gbk", {
        "YYMC": text("hospital"), "KSDM": text("dept"), "KSMC": text("dept_name"),
        "YSGH": text("no"), "YSXM": text("name"), "ZC": word("title", TITLES),
        "ZYZSBM": text("licence"), "SFZH": text("card")}),
    Style("staff-his.yaml", "xt_ysxx.csv", "gb18030", {
        "yymc": text("hospital"), "ksdm": text("dept"), "ksmc": text("dept_name"),
        "ysdm": text("no"), "ysxm": text("name"), "zc": word("title", TITLES),
        "yszgzh": text("licence"), "sfzh": text("card")}),
)


@dataclass(frozen=True)
class Case:
    facts: list[Fact]
    styles: tuple[Style, ...]
    counts: dict[str, int]  # resources expected in the store, by type


CASES = {
    "lab": Case(LAB, LAB_STYLES, {"DiagnosticReport": 2, "Observation": 6, "Specimen": 2,
                                  "ServiceRequest": 2}),
    "visit": Case(VISITS, VISIT_STYLES, {"Encounter": 3, "Condition": 2, "ChargeItem": 3}),
    "prescription": Case(PRESCRIPTIONS, PRESCRIPTION_STYLES, {"MedicationRequest": 5,
                                                              "MedicationDispense": 5}),
    "homepage": Case(HOMEPAGES, HOMEPAGE_STYLES, {
        "Patient": 2, "Encounter": 2, "Condition": 5, "Procedure": 1, "Observation": 3,
        "Claim": 2, "Composition": 2}),
    "billing": Case(SETTLEMENTS, BILLING_STYLES, {
        "ChargeItem": 7, "Account": 2, "Invoice": 2, "Coverage": 2, "Claim": 2,
        "ClaimResponse": 2}),
    "staff": Case(STAFF, STAFF_STYLES, {
        "Organization": 2, "Practitioner": 3, "PractitionerRole": 3}),
}


Stored = dict[tuple[str, str], dict[str, Any]]


def import_styles(tmp: Path, case: Case) -> list[Stored]:
    """Each style's export of the case's facts, imported into its own fresh store: what each
    store then holds, without the version metadata the store sets. Every row must import
    without a single rejection or warning, to the expected number of resources."""
    stores = []
    for style in case.styles:
        work = tmp / style.mapping.removesuffix(".yaml")
        work.mkdir()
        path = style.write(work, case.facts)
        report, stored = import_export(work, style.mapping, [path], HOSPITAL)
        assert report.rows_read == len(case.facts), style.mapping
        assert report.rows_rejected == 0, (style.mapping, report.rejections)
        assert report.rejections == [], (style.mapping, report.rejections)
        assert Counter(t for t, _ in stored) == case.counts, style.mapping
        stores.append({key: without_version(r) for key, r in stored.items()})
    return stores


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Stored]]:
    """The three stores of a dataset's case, imported once per test module."""
    done: dict[str, list[Stored]] = {}

    def get(dataset: str) -> list[Stored]:
        if dataset not in done:
            done[dataset] = import_styles(tmp_path_factory.mktemp(dataset), CASES[dataset])
        return done[dataset]

    return get


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_the_three_export_styles_import_the_same_hospital_to_the_same_fhir(
        imported: Callable[[str], list[Stored]], dataset: str) -> None:
    case = CASES[dataset]
    assert [s.mapping for s in case.styles] == [f"{dataset}-{s}.yaml" for s in STYLES]
    ws363, shouye, his = imported(dataset)
    assert set(ws363) == set(shouye) == set(his)
    for key in ws363:
        assert shouye[key] == ws363[key], (key, "shouye differs from ws363")
        assert his[key] == ws363[key], (key, "his differs from ws363")


def test_a_recycled_outpatient_number_stays_two_visits_in_every_style(
        imported: Callable[[str], list[Stored]]) -> None:
    for stored in imported("visit"):
        encounters = [r for (t, _), r in stored.items() if t == "Encounter"]
        days = sorted(e["identifier"][0]["period"]["start"] for e in encounters
                      if e["identifier"][0]["value"] == "0087")
        assert days == ["2026-11-20", "2026-11-21"]


def test_the_registration_fee_of_each_settlement_is_the_visits_charge_in_every_style(
        imported: Callable[[str], list[Stored]]) -> None:
    # The 医保结算清单 style writes 收费项目类别 13 for 挂号费: only after the values table has
    # made it the word does the fee line join the 挂号 mapper's ChargeItem of the visit.
    expected = {registration_fee_resource_id(HOSPITAL, outpatient_visit_key("0087", day))
                for day in ("2026-11-20", "2026-11-21")}
    for stored in imported("billing"):
        charges = {i for t, i in stored if t == "ChargeItem"}
        assert expected <= charges


def test_the_lab_order_and_tube_of_every_style_carry_the_order_and_specimen_columns(
        imported: Callable[[str], list[Stored]]) -> None:
    for stored in imported("lab"):
        orders = {r["code"]["text"]: r for (t, _), r in stored.items() if t == "ServiceRequest"}
        assert orders["血常规"]["identifier"][0]["value"] == "SQ2611200153"
        assert orders["血常规"]["requester"] == {"display": "李卫东"}
        assert orders["血常规"]["authoredOn"] == "2026-11-20T07:40:05+08:00"
        assert "authoredOn" not in orders["肝功能"]
        types = {r["identifier"][0]["value"]: r["type"]["coding"][0]["code"]
                 for (t, _), r in stored.items() if t == "Specimen"}
        assert types == {"2611200017": "BLD", "2611200018": "SER"}


def test_every_dispensed_line_is_handed_over_at_the_dispense_time_in_every_style(
        imported: Callable[[str], list[Stored]]) -> None:
    for stored in imported("prescription"):
        dispenses = [r for (t, _), r in stored.items() if t == "MedicationDispense"]
        assert sorted(d["whenHandedOver"] for d in dispenses) == [
            "2026-11-20T09:02:41+08:00"] * 2 + ["2026-11-21T10:15:09+08:00"] * 3
        assert sorted(d["performer"][0]["actor"]["display"] for d in dispenses
                      if "performer" in d) == ["孙晓梅"] * 2


def test_words_a_style_writes_land_as_the_standard_codes_and_the_coded_note(
        imported: Callable[[str], list[Stored]]) -> None:
    for stored in imported("homepage"):
        by_type: dict[str, list[dict[str, Any]]] = {}
        for (rtype, _), resource in stored.items():
            by_type.setdefault(rtype, []).append(resource)
        widowed = next(p for p in by_type["Patient"] if p["name"][0]["text"] == "欧阳秀英")
        assert widowed["maritalStatus"]["coding"][0]["code"] == "30"
        assert "urn:oid:2.16.156.10011.1.3" in {i.get("system") for i in widowed["identifier"]}
        pci = by_type["Procedure"][0]
        assert pci["note"] == [{"text": "麻醉方式(CV06.00.103): 3 局部麻醉"}]
        assert pci["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "3"


def style_files(dataset: str, style: str) -> list[Path]:
    """The mapping files of one style of a dataset: `<dataset>-<style>.yaml`, the dataset's
    underscores written as either underscores or hyphens (outpatient-record-his.yaml)."""
    names = {f"{dataset}-{style}.yaml", f"{dataset.replace('_', '-')}-{style}.yaml"}
    return [MAPPINGS / name for name in sorted(names) if (MAPPINGS / name).is_file()]


def test_every_shipped_mapping_file_loads_and_is_named_after_its_dataset() -> None:
    paths = sorted(MAPPINGS.glob("*.yaml"))
    assert paths
    for path in paths:
        dataset = load_mapping(path, DATA_ELEMENTS).dataset
        assert path.name.startswith((dataset + "-", dataset.replace("_", "-") + "-")), (
            f"{path.name} maps dataset {dataset}; name it {dataset}-<style>.yaml")


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_every_dataset_ships_the_ws363_shouye_and_his_styles(dataset: str) -> None:
    for style in STYLES:
        paths = style_files(dataset, style)
        assert paths, f"dataset {dataset} has no {style} export style ({dataset}-{style}.yaml)"
        for path in paths:
            assert load_mapping(path, DATA_ELEMENTS).dataset == dataset, path.name

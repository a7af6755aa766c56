"""The sample hospital export in app/samples/exports/: one day of a HIS's files, awkward cases
included.

北京市朝阳区第三人民医院 (OID 2.16.156.10011.1.5.110000001) exports its tables with lower-case
pinyin column names, the style of the `*-his.yaml` mapping files, one file per dataset. The
files carry on purpose what real exports carry: GBK and GB18030 as well as UTF-8 (with and
without BOM), a rare character only GB18030 can encode (王䶮), a 15-digit legacy 身份证号, a wrong
check character, 身份证号 whose sex or birth date contradict the recorded ones, exact duplicate
rows, a 门诊号 given out again the next day, blank optional columns, full-width digits, dates as
YYYYMMDD, YYYY/MM/DD HH:MM and YYYY年M月D日, qualitative lab results (阴性, +, <0.5), an amount with
three decimals, and rows that must be rejected. README.md next to this file lists every case
and what the importer does with it; tests/cnemr/test_sample_exports.py proves it.

`manifest.yaml` imports them all in one command. Regenerate with
`python -m app.samples.exports.build` (deterministic: the same bytes every run;
a test fails when the files in the repository differ from what this module writes).
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from app.samples.identity import make_id

HERE = Path(__file__).resolve().parent
HOSPITAL_OID = "2.16.156.10011.1.5.110000001"
HOSPITAL_NAME = "北京市朝阳区第三人民医院"


@dataclass(frozen=True)
class Export:
    """One export file: its name, the shipped mapping that reads it and how the HIS wrote it."""

    file_name: str
    mapping: str  # file name in app/cnemr/mappings/
    encoding: str  # as written; the importer detects it (encoding: auto)
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def render(self) -> bytes:
        buf = io.StringIO(newline="")
        out = csv.writer(buf, lineterminator="\r\n")
        out.writerow(self.header)
        for row in self.rows:
            assert len(row) == len(self.header), (self.file_name, row)
            out.writerow(row)
        return buf.getvalue().encode(self.encoding)


def legacy_15(number: str) -> str:
    """The 15-digit form (before 1999) of an 18-character 居民身份证号 born in the 1900s."""
    return number[:6] + number[8:17]


def wrong_check(number: str) -> str:
    """The number with a check character that does not match, as a typing slip leaves it."""
    return number[:17] + ("3" if number[17] != "3" else "5")


def full_width(text: str) -> str:
    """ASCII digits as the full-width digits GBK-era input methods type."""
    return text.translate({ord(c): ord(c) - 0x30 + 0xFF10 for c in "0123456789"})


# The patients (院内患者ID = patid), and their 居民身份证号 (GB 11643-1999, valid check characters).
ZHANG = make_id("110105", date(1962, 3, 14), 31)  # 张建国 男
OUYANG = make_id("440106", date(1988, 11, 2), 42)  # 欧阳娜娜 女
MA = make_id("640102", date(1990, 5, 12), 2)  # 马晓梅 女 回族
LI = make_id("110101", date(1956, 7, 8), 86)  # 李秀英 女, holds a 1990s card: 15 digits
ZHAO = make_id("370102", date(1971, 9, 30), 17)  # 赵志强 男
SUN = make_id("320106", date(1983, 4, 17), 64)  # 孙丽 女 (the HIS says 男)
ZHOU = make_id("330106", date(1979, 6, 20), 35)  # 周伟 男 (the HIS says born 1979-06-02)
CHEN = make_id("110108", date(1985, 3, 8), 122)  # 陈静 女
HUANG = make_id("430104", date(1993, 2, 13), 57)  # 黄海 男
LIU = make_id("410105", date(2001, 10, 1), 93)  # 刘洋 男
WANG_YAN = make_id("440103", date(1949, 12, 25), 11)  # 王䶮 男
DENG = make_id("510104", date(1958, 1, 19), 77)  # 邓建华 男

PATIENT = Export(
    "xt_brjbxx.csv", "patient-his.yaml", "gbk",
    ("patid", "xm", "xb", "csny", "zjlx", "zjh", "mz", "hyzk", "dh", "jtzz"),
    (
        ("100231", "张建国", "男", "1962-03-14", "01", ZHANG, "01", "已婚", "13910012345",
         "北京市朝阳区安贞路2号院3号楼501"),
        ("100232", "欧阳娜娜", "女", "19881102", "01", OUYANG, "01", "未婚", "13602211234",
         "广东省广州市天河区体育西路103号"),
        ("100233", "马晓梅", "女", "1990/05/12", "01", MA, "03", "已婚", "13995012345",
         "宁夏回族自治区银川市兴庆区解放西街88号"),
        ("100234", "李秀英", "女", "1956-07-08", "01", legacy_15(LI), "01", "丧偶",
         "010-64213355", "北京市东城区和平里北街9号"),
        ("100235", "赵志强", "男", "1971-09-30", "01", wrong_check(ZHAO), "01", "已婚",
         "13705318899", "山东省济南市历下区泉城路180号"),
        ("100236", "孙丽", "男", "1983-04-17", "01", SUN, "01", "已婚", "13852016677",
         "江苏省南京市鼓楼区中山北路30号"),
        ("100237", "周伟", "男", "1979-06-02", "01", ZHOU, "01", "已婚", "13957121188",
         "浙江省杭州市西湖区文三路90号"),
        # the HIS exported 张建国 twice (a join over two 就诊卡 rows)
        ("100231", "张建国", "男", "1962-03-14", "01", ZHANG, "01", "已婚", "13910012345",
         "北京市朝阳区安贞路2号院3号楼501"),
        ("100238", "吴敏", "女", "", "", "", "", "", "", ""),
        ("100239", "陈静", "女", "1985年3月8日", "01", CHEN, "01", "未婚",
         full_width("13801380001"), "北京市海淀区中关村南大街5号"),
        ("100240", "", "男", "1968-12-01", "01", "", "01", "已婚", "13511223344", ""),
        ("100242", "黄海", "男", "1993-02-30", "01", HUANG, "01", "未婚", "13787654321",
         "湖南省长沙市芙蓉区五一大道66号"),
        ("100243", "刘洋", "男", "2001-10-01", "01", full_width(LIU), "01", "未婚",
         "15637112233", "河南省郑州市金水区花园路27号"),
    ))

LAB = Export(
    "lis_jyjg.csv", "lab-his.yaml", "utf-8-sig",
    ("bgdh", "patid", "bbh", "zhdm", "zhmc", "xmdm", "xmmc", "jg", "dw", "ckfw", "bz", "cysj",
     "jysj", "bgsj", "ks", "bgys"),
    tuple(
        (report, patid, specimen, panel_code, panel, *item, *times, "检验科", "赵丽华")
        for report, patid, specimen, panel_code, panel, times, items in (
            ("JY20261120001", "100231", "2611200017", "XCG", "血常规",
             ("2026-11-20 07:52:00.000", "2026-11-20 08:40:15.000", "2026-11-20 10:05:00.000"),
             (("WBC", "白细胞计数", "11.2", "×10^9/L", "3.5-9.5", "↑"),
              ("HGB", "血红蛋白", "135", "g/L", "130-175", "正常"),
              ("PLT", "血小板计数", "86", "×10^9/L", "125-350", "↓"))),
            ("JY20261120002", "100232", "2611200018", "GGN", "肝功能",
             ("2026-11-20 08:03:00.000", "2026-11-20 09:12:40.000", "2026-11-20 11:30:00.000"),
             (("ALT", "丙氨酸氨基转移酶", "56", "U/L", "7-40", "高"),
              ("AST", "天门冬氨酸氨基转移酶", "32", "U/L", "13-35", "正常"),
              ("TBIL", "总胆红素", "15.3", "μmol/L", "3.4-20.5", "正常"))),
            # qualitative results stay text; '<0.5' is a Quantity with a comparator
            ("JY20261120003", "100233", "2611200031", "YXGB", "乙肝两对半",
             ("2026-11-20 08:15:00.000", "2026-11-20 10:02:11.000", "2026-11-20 14:20:00.000"),
             (("HBSAG", "乙肝表面抗原", "阴性", "", "阴性", ""),
              ("HBSAB", "乙肝表面抗体", "阳性", "", "阴性", "阳性"),
              ("HBEAG", "乙肝e抗原", "阴性", "", "阴性", ""))),
            ("JY20261120006", "100236", "2611200063", "CRP", "超敏C反应蛋白",
             ("2026-11-20 09:30:00.000", "2026-11-20 09:58:00.000", "2026-11-20 10:15:00.000"),
             (("HSCRP", "超敏C反应蛋白", "<0.5", "mg/L", "0-3", ""),)),
            ("JY20261120004", "100234", "2611200040", "NCG", "尿常规",
             ("2026-11-20 09:01:00.000", "2026-11-20 09:40:00.000", "2026-11-20 10:30:00.000"),
             (("PRO", "尿蛋白", "+", "", "阴性", "阳性"),
              ("GLU", "尿葡萄糖", "阴性", "", "阴性", ""),
              ("SG", "尿比重", "1.025", "", "1.003-1.030", ""),
              # the same row exported twice by the LIS join
              ("SG", "尿比重", "1.025", "", "1.003-1.030", ""))),
            # an item the analyser never reported: the result is blank
            ("JY20261120005", "100235", "2611200052", "SGN", "肾功能",
             ("2026-11-20 08:20:00.000", "2026-11-20 09:55:00.000", "2026-11-20 11:02:00.000"),
             (("CREA", "肌酐", "78", "μmol/L", "57-111", "正常"),
              ("UREA", "尿素", "", "mmol/L", "3.1-8.0", ""))),
        )
        for item in items
    ))

VISIT = Export(
    "mz_gh.csv", "visit-his.yaml", "utf-8",
    ("mzh", "ghrq", "jzsj", "patid", "mjzbz", "ks", "ys", "zdicd10", "zdmc", "ghf"),
    (
        ("0087", "2026-11-20 07:58:12", "2026/11/20 08:31", "100231", "门诊", "心血管内科门诊",
         "李卫东", "I10.x00x002", "原发性高血压", "10.00"),
        # 急诊 registration not seen yet: blank 就诊时间, 医生 and 诊断
        ("0012", "20261120", "", "100232", "急诊", "急诊科", "", "", "", "15.00"),
        ("0031", "2026年11月20日", "2026/11/20 09:47", "100236", "门诊", "内分泌科门诊", "陈静",
         "E11.900", "2型糖尿病", full_width("10") + ".00"),
        # exported twice
        ("0031", "2026年11月20日", "2026/11/20 09:47", "100236", "门诊", "内分泌科门诊", "陈静",
         "E11.900", "2型糖尿病", full_width("10") + ".00"),
        # 门诊号 0087 is given out again the next day: another visit
        ("0087", "2026-11-21 08:05:40", "2026/11/21 09:12", "100233", "门诊", "中医内科门诊",
         "周慧敏", "J06.900", "急性上呼吸道感染", "20.00"),
        ("0102", "2026-11-21 10:11:02", "2026/11/21 10:40", "100239", "门诊", "呼吸内科门诊",
         "王志强", "J18.900", "肺炎", "10.00"),
        # 门急诊标志 left blank by the registration clerk
        ("0108", "2026-11-21 10:35:27", "", "100243", "", "消化内科门诊", "", "", "", "10.00"),
    ))

PRESCRIPTION = Export(
    "xt_dzcfmx.csv", "prescription-his.yaml", "gbk",
    ("cfh", "patid", "mzh", "kfrq", "ysxm", "cflx", "fybz", "fs", "jzfs", "xh", "ypCode", "ybbm",
     "ypmc", "gg", "mcjl", "mcjldw", "yfCode", "pcCode", "sl", "dw", "ts", "zh"),
    (
        ("CF202611200031", "100231", "0087", "2026-11-20 08:45:30", "李卫东", "西药", "是", "",
         "", "1", "Y0103045", "XC08CAN136A001010101446", "硝苯地平控释片", "30mg×7片", "30",
         "mg", "01", "qd", "7", "片", "7", "1"),
        ("CF202611200031", "100231", "0087", "2026-11-20 08:45:30", "李卫东", "西药", "是", "",
         "", "2", "Y0201187", "XA10BAM069A010010101445", "盐酸二甲双胍缓释片", "0.5g×30片",
         "0.5", "g", "01", "bid", "14", "片", "7", "2"),
        # a 中药处方 of the second 0087 visit, doses typed with full-width digits
        ("CF202611210007", "100233", "0087", "2026-11-21 09:30:02", "周慧敏", "中药", "是", "7",
         "水煎服", "1", "ZY0101", "", "黄芪", "", full_width("30"), "g", "06", "bid",
         "210", "g", "7", ""),
        ("CF202611210007", "100233", "0087", "2026-11-21 09:30:02", "周慧敏", "中药", "是", "7",
         "水煎服", "2", "ZY0233", "", "丹参", "", full_width("15"), "g", "06", "bid",
         "105", "g", "7", ""),
        ("CF202611210007", "100233", "0087", "2026-11-21 09:30:02", "周慧敏", "中药", "是", "7",
         "水煎服", "3", "ZY0145", "", "川芎", "", full_width("10"), "g", "06", "bid",
         "70", "g", "7", ""),
        # not yet dispensed, optional columns blank
        ("CF202611210019", "100239", "0102", "2026-11-21 10:52:44", "王志强", "西药", "", "",
         "", "1", "Y0305012", "", "阿莫西林胶囊", "", "0.5", "g", "01", "tid", "", "", "", ""),
        # 开方医生 missing: the CN profile requires a requester, so the 处方 is rejected
        ("CF202611210023", "100243", "0108", "2026-11-21 10:58:09", "", "西药", "", "", "",
         "1", "Y0402033", "", "奥美拉唑肠溶胶囊", "20mg×14粒", "20", "mg", "01", "qd", "14",
         "粒", "14", ""),
    ))

_HOMEPAGE_HEADER = (
    "bah", "zyh", "zycs", "xm", "xb", "csrq", "zjlx", "sfzh", "mz", "hyzk", "fkfs", "rytj",
    "rysj", "rykb", "cysj", "cykb", "sjzyts", "lyfs", "zzys", "zyzd", "zyzdbm", "zyzdrybq",
    "qtzd1", "qtzdbm1", "qtzdrybq1", "qtzd2", "qtzdbm2", "qtzdrybq2", "ssbm1", "ssmc1",
    "ssrq1", "ssjb1", "mzfs1", "sz1", "xx", "rh", "zfy", "zfje", "hlf", "syszdf", "ssf",
    "xyf")


def _homepage(**cells: str) -> tuple[str, ...]:
    return tuple(cells.get(column, "") for column in _HOMEPAGE_HEADER)


HOMEPAGE = Export(
    "ba_syxx.csv", "homepage-his.yaml", "gb18030", _HOMEPAGE_HEADER,
    (
        # 䶮 (U+4DAE, CJK Extension A) is not in GBK: only GB18030 (or UTF-8) can carry it
        _homepage(bah="100241", zyh="ZY20261102", zycs="1", xm="王䶮", xb="男",
                  csrq="1949年12月25日", zjlx="居民身份证", sfzh=WANG_YAN, mz="01", hyzk="已婚",
                  fkfs="1", rytj="急诊", rysj="2026-11-02 21:40:00.000", rykb="心血管内科",
                  cysj="2026-11-12 09:30:00.000", cykb="心血管内科", sjzyts="10",
                  lyfs="医嘱离院", zzys="李卫东", zyzd="急性心肌梗死", zyzdbm="I21.000",
                  zyzdrybq="有", qtzd1="原发性高血压", qtzdbm1="I10.x00x002", qtzdrybq1="有",
                  qtzd2="2型糖尿病", qtzdbm2="E11.900", qtzdrybq2="有", ssbm1="00.6601",
                  ssmc1="经皮冠状动脉腔内血管成形术[PTCA]", ssrq1="2026-11-02 23:05:00.000",
                  ssjb1="三级手术", mzfs1="局部麻醉", sz1="王志强", xx="A", rh="阳性",
                  zfy="58632.47", zfje="12034.50", hlf="1260.00", syszdf="2150.00",
                  ssf="3200.00", xyf="8421.36"),
        # a 首页 upload without 住院次数: the admission has no key and is rejected
        _homepage(bah="100244", zyh="ZY20261105", zycs="", xm="邓建华", xb="男",
                  csrq="1958年1月19日", zjlx="居民身份证", sfzh=DENG, mz="01", hyzk="已婚",
                  fkfs="2", rytj="门诊", rysj="2026-11-05 10:12:00.000", rykb="呼吸内科",
                  cysj="2026-11-13 10:00:00.000", cykb="呼吸内科", lyfs="医嘱离院",
                  zzys="王志强", zyzd="肺炎", zyzdbm="J18.900", zyzdrybq="有", xx="O", rh="阳性",
                  zfy="9876.40", zfje="2310.00", xyf="3120.55"),
    ))

BILLING = Export(
    "mz_js.csv", "billing-his.yaml", "gb18030",
    ("jsid", "patid", "mzh", "jzrq", "fph", "jsrq", "ybjslsh", "xmbm", "xmmc", "sfdl", "dj",
     "sl", "je", "zje", "tczf", "grzhzf", "xjzf", "zfje", "zfei", "yblx"),
    tuple(
        (sid, patid, mzh, day, invoice, settled, insurance_no, *line, *split)
        for sid, patid, mzh, day, invoice, settled, insurance_no, split, lines in (
            # 100.00 元 = 统筹 60.00 + 个人账户 30.00 + 现金 10.00; 自付 30.00 + 自费 10.00
            ("JS202611200153", "100231", "0087", "2026/11/20", "0012611200153",
             "2026/11/20 10:42", "110000G202611201042170153",
             ("100.00", "60.00", "30.00", "10.00", "30.00", "10.00", "职工医保"),
             (("110200001", "普通门诊挂号费", "挂号费", "10.00", "1", "10.00"),
              ("Y0103045", "硝苯地平控释片 30mg×7片", "西药费", "32.50", "2", "65.00"),
              ("250101015", "血常规(五分类)", "化验费", "25.00", "1", "25.00"))),
            ("JS202611210021", "100233", "0087", "2026/11/21", "0012611210021",
             "2026/11/21 09:58", "110000G202611210958030021",
             ("87.20", "30.00", "0.00", "57.20", "47.20", "10.00", "居民医保"),
             (("110200002", "副主任医师门诊诊查费", "挂号费", "20.00", "1", "20.00"),
              ("ZY0101", "黄芪", "中药饮片费", "0.12", "210", "25.20"),
              ("ZY0233", "丹参", "中药饮片费", "0.20", "105", "21.00"),
              ("ZY0145", "川芎", "中药饮片费", "0.30", "70", "21.00"))),
            # self-pay; a 金额 with three decimals, as a decimal(18,3) column dumps it
            ("JS202611210044", "100239", "0102", "2026/11/21", "0012611210044",
             "2026/11/21 11:05", "",
             ("37.15", "", "", "37.15", "", "37.15", ""),
             (("110200001", "普通门诊挂号费", "挂号费", "10.00", "1", "10.00"),
              ("Y0305012", "阿莫西林胶囊 0.25g×24粒", "西药费", "9.05", "3", "27.150"))),
        )
        for line in lines
    ))

STAFF = Export(
    "xt_ysxx.csv", "staff-his.yaml", "utf-8",
    ("yymc", "ksdm", "ksmc", "ysdm", "ysxm", "zc", "yszgzh", "sfzh"),
    (
        (HOSPITAL_NAME, "0301", "心血管内科", "100213", "李卫东", "主任医师", "110110105000213",
         make_id("110105", date(1968, 4, 2), 17)),
        (HOSPITAL_NAME, "0301", "心血管内科", "100457", "王志强", "副主任医师",
         "110110105000457", make_id("130102", date(1975, 9, 21), 55)),
        (HOSPITAL_NAME, "0305", "内分泌科", "100981", "陈静", "主治医师", "110110105000981",
         make_id("410105", date(1986, 1, 30), 64)),
        (HOSPITAL_NAME, "0410", "中医内科", "101022", "周慧敏", "副主任中医师", "",
         ""),
        (HOSPITAL_NAME, "0601", "检验科", "102310", "赵丽华", "主管技师", "", ""),
        # a 科室 row without staff: the 急诊科 itself
        (HOSPITAL_NAME, "0901", "急诊科", "", "", "", "", ""),
    ))

EXPORTS: tuple[Export, ...] = (PATIENT, LAB, VISIT, PRESCRIPTION, HOMEPAGE, BILLING, STAFF)


def manifest() -> str:
    """The `yilian import --manifest` file importing every sample, patients and staff first."""
    lines = ["# 样例医院的每日导出: yilian import --manifest app/samples/exports/manifest.yaml",
             f"hospital_oid: {HOSPITAL_OID}", "steps:"]
    for export in (PATIENT, STAFF, VISIT, LAB, PRESCRIPTION, HOMEPAGE, BILLING):
        lines += [f"  - mapping: {export.mapping.removesuffix('.yaml')}",
                  f"    files: [{export.file_name}]"]
    return "\n".join(lines) + "\n"


def build(folder: Path = HERE) -> list[Path]:
    """Write every sample export, and the manifest importing them, into `folder`; the paths
    written."""
    paths = []
    for export in EXPORTS:
        path = folder / export.file_name
        path.write_bytes(export.render())
        paths.append(path)
    path = folder / "manifest.yaml"
    path.write_text(manifest(), encoding="utf-8")
    return [*paths, path]


def main() -> int:
    for path in build():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

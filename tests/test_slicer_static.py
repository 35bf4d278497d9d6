"""Checks of the 3D Slicer extension (slicer_ext/) that need neither Slicer nor a server.

The widget (MedSegDiff.py, Qt) only runs in a Slicer window: it is checked statically (it compiles for
Slicer's Python, the .ui declares every widget it uses, CMake lists every file). MedSegDiffLib - which must
not import slicer/qt/vtk/ctk - is tested for real in tests/test_slicer_lib*.py; the Logic (MedSegDiffSceneLib) runs on Slicer's own
libraries in tests/test_slicer_core_*.py.
"""

import ast
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slicer_ext_info import (  # noqa: E402
    EXT_DIR, LIB_DIR, LIB_FILES, LOGIC_FILE, MAX_LINES, MEDSEGDIFF_INFO, MODULE_DIR, MODULE_FILE, PY_FILES,
    SCENE_LIB_FILES, SLICER_ONLY_MODULES, UI_FILE, WIDGET_FILES, buttonStates, lib,
)


# -- files --------------------------------------------------------------------------------------------


def test_extension_has_the_expected_files():
    for path in (
        EXT_DIR / "CMakeLists.txt",
        EXT_DIR / "README.md",
        EXT_DIR / "MedSegDiff.s4ext",
        MODULE_DIR / "CMakeLists.txt",
        MODULE_FILE,
        UI_FILE,
        MODULE_DIR / "Resources" / "Icons" / "MedSegDiff.png",
        LIB_DIR / "__init__.py",
    ):
        assert path.is_file(), f"missing {path.relative_to(EXT_DIR)}"


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(EXT_DIR)))
def test_python_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)
    # Slicer 5.0-5.6 embed Python 3.9: no newer syntax.
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def _imported_top_modules(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            if isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value).split(".")[0])
    return names


@pytest.mark.parametrize("path", LIB_FILES, ids=lambda p: p.name)
def test_lib_does_not_import_slicer_qt_vtk_ctk(path):
    forbidden = _imported_top_modules(path) & SLICER_ONLY_MODULES
    assert not forbidden, f"{path.name} imports {sorted(forbidden)}; MedSegDiffLib must run outside Slicer"


def test_importing_lib_loads_no_slicer_module():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import MedSegDiffLib; "
        f"print(sorted(set(m.split('.')[0] for m in sys.modules) & set({sorted(SLICER_ONLY_MODULES)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_module_defines_the_slicer_classes_and_imports_the_logic():
    tree = ast.parse(MODULE_FILE.read_text())
    bases = {
        node.name: [getattr(b, "id", getattr(b, "attr", None)) for b in node.bases]
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }
    assert "ScriptedLoadableModule" in bases["MedSegDiff"]
    assert "ScriptedLoadableModuleWidget" in bases["MedSegDiffWidget"]
    assert "ScriptedLoadableModuleTest" in bases["MedSegDiffTest"]
    imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "MedSegDiffLogic" in imported, "MedSegDiff.MedSegDiffLogic must stay importable for scripts"
    logic = next(c for c in ast.parse(LOGIC_FILE.read_text()).body if getattr(c, "name", "") == "MedSegDiffLogic")
    process = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "process")
    assert [a.arg for a in process.args.args] == ["self", "volumeNode", "params", "progress"]


@pytest.mark.parametrize("path", SCENE_LIB_FILES, ids=lambda p: p.name)
def test_logic_imports_only_slicer_vtk_and_the_lib_and_opens_no_dialog(path):
    imported = _imported_top_modules(path)
    assert not imported & {"qt", "ctk"}, f"{path.name} imports Qt: the Logic must run without it"
    source = path.read_text()
    for dialog in ("Display(", "messageBox", "QMessageBox", "QFileDialog", "QInputDialog", "tryWithErrorDisplay"):
        assert dialog not in source, f"{path.name} uses {dialog}: the logic must never open dialogs"


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(EXT_DIR)))
def test_extension_files_are_small_and_only_the_widget_imports_qt(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES})"
    if path.name not in ("MedSegDiff.py", "run_slicer_test.py"):
        assert not _imported_top_modules(path) & {"qt", "ctk"}, f"{path.name} imports Qt outside the widget"


# -- .ui -------------------------------------------------------------------------------------------


def _ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}, root


def test_ui_is_a_designer_file_with_a_mrml_widget_root():
    widgets, root = _ui_widgets()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    assert len(widgets) == len(list(root.iter("widget"))), "widget names in the .ui must be unique"


def test_every_self_ui_name_exists_in_the_ui_file():
    used = {  # self.ui.X in the widget, widget.ui.X / ui.X in its helpers (MedSegDiffWidgetLib)
        node.attr
        for path in WIDGET_FILES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and (isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
             or isinstance(node.value, ast.Name) and node.value.id == "ui")
    }
    assert len(used) > 15, "the widget should use its .ui controls through self.ui"
    assert {"addPositivePointButton", "refineButton"} <= used, "the helpers' ui.X uses are not collected"
    states = buttonStates(lib.ServerInfo.from_json(MEDSEGDIFF_INFO), lib.BackgroundWork(), True,
                                       None, None, None, None)  # fmt: skip
    used |= set(states)
    module = ast.parse(MODULE_FILE.read_text())
    fields = next(ast.literal_eval(n.value) for n in module.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], "id", "") == "UI_PARAMETERS")  # fmt: skip
    used |= {f"{field}SpinBox" for field in fields}  # getattr in setup()
    used |= {f"{name}ComboBox" for name in ("sampler", "device", "fusion")}
    widgets, _ = _ui_widgets()
    missing = sorted(used - set(widgets))
    assert not missing, f"MedSegDiff.py uses self.ui.{missing} that MedSegDiff.ui does not declare"


def test_ui_parameter_bindings_name_parameter_node_fields():
    tree = ast.parse(MODULE_FILE.read_text())
    wrapper = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "MedSegDiffParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    _, root = _ui_widgets()
    bound = {
        p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"
    }
    assert bound, "the .ui binds no control to the parameter node"
    assert bound <= fields, f"SlicerParameterName values {sorted(bound - fields)} are not parameter node fields"


def test_custom_widgets_of_the_ui_are_declared():
    widgets, root = _ui_widgets()
    declared = {cw.find("class").text for cw in root.iter("customwidget")}
    used = {w.get("class") for w in widgets.values() if not w.get("class").startswith("Q")}
    assert used <= declared, f"custom widget classes {sorted(used - declared)} lack a <customwidget> entry"


# -- CMake -------------------------------------------------------------------------------------------


def test_module_cmakelists_lists_every_python_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedSegDiff")
    listed = set(re.findall(r"^\s+([\w/.]+\.\w+)\s*$", text, flags=re.MULTILINE))
    python = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py")}
    assert python - listed == set(), f"CMakeLists.txt does not list {sorted(python - listed)}"
    resources = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert resources - listed == set(), f"CMakeLists.txt does not list {sorted(resources - listed)}"
    assert all((MODULE_DIR / name).is_file() for name in listed), "CMakeLists.txt lists a file that does not exist"
    assert "slicerMacroBuildScriptedModule" in text


def test_extension_cmakelists_has_the_extension_metadata():
    text = (EXT_DIR / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert re.search(rf"set\({key}\s+\"[^\"]+\"\)", text), f"{key} is not set"
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', text)
    assert re.search(r"EXTENSION_HOMEPAGE\s+\"[^\"]*README\.md\"", text)
    assert "find_package(Slicer REQUIRED)" in text
    assert "add_subdirectory(MedSegDiff)" in text


def test_s4ext_description_matches_the_cmake_metadata():
    fields = {}
    for line in (EXT_DIR / "MedSegDiff.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    cmake = (EXT_DIR / "CMakeLists.txt").read_text()
    url = re.search(r'set\(MEDSEGDIFF_REPOSITORY_URL "([^"]+)"', cmake).group(1)
    assert fields["scm"] == "git" and fields["scmurl"] == url + ".git"
    assert fields["build_subdirectory"] == "slicer_ext", "the extension's CMakeLists.txt is in slicer_ext/"
    assert fields["homepage"] == url + "/blob/main/slicer_ext/README.md"
    assert fields["iconurl"] == url + "/raw/main/slicer_ext/MedSegDiff.png"
    assert fields["screenshoturls"] == url + "/raw/main/slicer_ext/MedSegDiff-view.png"
    assert (EXT_DIR / "MedSegDiff-view.png").is_file()
    assert fields["category"] == re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake).group(1)
    assert fields["description"] == re.search(r'set\(EXTENSION_DESCRIPTION "([^"]+)"\)', cmake).group(1)

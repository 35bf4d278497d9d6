"""Render the axial slice view the MedSegDiff Logic sets up, headless, with 3D Slicer's own renderer.

Runs in ``.venv-slicer`` (trame-slicer 2.0 with its slicer-core 5.11, made by scripts/setup.sh; rendering
through EGL, no X server): loads the image, the server's label and uncertainty map with the extension's Logic
(``MedSegDiffSceneLib``, unchanged), shows the uncertainty overlay with the given threshold and opacity over
the volume and the segmentation outline, moves to the most uncertain slice and writes the view as a PNG::

    .venv-slicer/bin/python scripts/render_slicer_view.py IMAGE LABEL UNCERTAINTY OUT.png \\
        --labels '{"brain": 1}' --colors '{"brain": [0.9, 0.6, 0.2]}' --threshold 0.05 --opacity 0.5
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "slicer_ext" / "MedSegDiff"))


def render(image, label, uncertainty, out, labels, colors, threshold, opacity, size=512):
    """Build the scene with the Logic, render the axial view offscreen and write ``out`` (PNG)."""
    import vtk
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    from MedSegDiffLib import ServerInfo
    from MedSegDiffSceneLib import MedSegDiffLogic, StorageNodeFileIO

    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    view = app.view_manager.create_view(ViewLayoutDefinition.axial_view())
    logic = MedSegDiffLogic(app.scene, StorageNodeFileIO(app.volumes_logic))
    logic.serverInfo = ServerInfo.from_json({"models": {"medsegdiff": {"labels": labels, "label_colors": colors}}})
    logic.model = "medsegdiff"
    work = Path(tempfile.mkdtemp(prefix="render-"))
    try:
        for name, path in (("image", image), ("remote", label), ("remote", uncertainty)):
            (work / name).mkdir(exist_ok=True)
            shutil.copy(path, work / name / Path(path).name)
        volume = logic.loadSample({"id": "image", "path": str(work / "image" / Path(image).name)})
        remote = {"imageId": "image", "labelPath": str(work / "remote" / Path(label).name),
                  "uncertaintyPath": str(work / "remote" / Path(uncertainty).name), "folder": str(work / "remote")}
        result = logic.importResults(volume, remote)
        logic.showUncertainty(volume, result["uncertainty"], threshold=threshold, opacity=opacity)
        logic.jumpToMostUncertainSlice(result["uncertainty"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
        logic.cleanup()
    view.render_window().SetSize(size, size)
    view.fit_view_to_content()
    view.render()
    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(view.render_window())
    capture.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(out))
    writer.SetInputConnection(capture.GetOutputPort())
    writer.Write()
    return str(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("image", "label", "uncertainty", "out"):
        parser.add_argument(name)
    parser.add_argument("--labels", default='{"brain": 1}', help="server labels as JSON {name: value}")
    parser.add_argument("--colors", default="{}", help="label colours as JSON {name: [r, g, b]} (0-1)")
    parser.add_argument("--threshold", type=float, default=None, help="uncertainty below it is transparent")
    parser.add_argument("--opacity", type=float, default=0.5, help="opacity of the uncertainty overlay")
    parser.add_argument("--size", type=int, default=512, help="view size in pixels")
    args = parser.parse_args(argv)
    render(args.image, args.label, args.uncertainty, args.out, json.loads(args.labels), json.loads(args.colors),
           args.threshold, args.opacity, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())

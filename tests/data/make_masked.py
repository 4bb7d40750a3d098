"""Makes tests/data/masked/: the photos of tests/data/faces with a surgical-mask shape drawn
over the lower part of every face. SYNTHETIC: no real mask is in these images; they test that
the cascade finds faces whose mouth and nose are covered and that the classifier calls them
`mask`. Face boxes come from the committed SSD detector at a low threshold (0.3), so faces
the detector only half sees are masked too. Run with the models venv (models/build.sh):

    .venv/bin/python tests/data/make_masked.py
"""
import os

import cv2
import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main():
    ssd = ort.InferenceSession(os.path.join(ROOT, "models", "ssd_face.onnx"), providers=["CPUExecutionProvider"])
    src, dst = os.path.join(HERE, "faces"), os.path.join(HERE, "masked")
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        img = cv2.imread(os.path.join(src, name))
        if img is None:
            continue
        h, w = img.shape[:2]
        dets = ssd.run(None, {"image": cv2.dnn.blobFromImage(img, 1, (300, 300), (104, 177, 123))})[0]
        for d in dets[dets[:, 2] > 0.3]:
            x1, y1, x2, y2 = d[3] * w, d[4] * h, d[5] * w, d[6] * h
            bw, bh = x2 - x1, y2 - y1
            top = y1 + 0.52 * bh
            pts = np.array([
                (x1 + 0.06 * bw, top), (x1 + 0.5 * bw, top - 0.06 * bh), (x2 - 0.06 * bw, top),
                (x2 - 0.1 * bw, y2 - 0.08 * bh), (x1 + 0.5 * bw, y2 + 0.06 * bh), (x1 + 0.1 * bw, y2 - 0.08 * bh),
            ], np.int32)
            cv2.fillPoly(img, [pts], (235, 215, 170), lineType=cv2.LINE_AA)  # pale blue, BGR
            for k in (0.62, 0.72, 0.82):  # pleats
                y = int(y1 + k * bh)
                cv2.line(img, (int(x1 + 0.12 * bw), y), (int(x2 - 0.12 * bw), y), (205, 185, 140), max(1, int(bw / 60)), cv2.LINE_AA)
            for side in ((x1 + 0.06 * bw, x1 - 0.02 * bw), (x2 - 0.06 * bw, x2 + 0.02 * bw)):  # ear loops
                cv2.line(img, (int(side[0]), int(top)), (int(side[1]), int(y1 + 0.4 * bh)), (240, 240, 240), max(1, int(bw / 50)), cv2.LINE_AA)
        out = os.path.join(dst, os.path.splitext(name)[0] + ".jpg")
        cv2.imwrite(out, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        print(out)


if __name__ == "__main__":
    main()

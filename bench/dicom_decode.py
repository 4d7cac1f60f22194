#!/usr/bin/env python3
"""dicom_decode, the pydicom + numpy side: the same work as bench_dicom_decode on the same
files (parse, pixel data, modality rescale, the file's linear VOI window, 8-bit output).
Prints one JSON object. Run with Debian's /usr/bin/python3 (python3-pydicom)."""
import argparse, glob, json, os, statistics, time

import numpy as np
import pydicom


def decode(path):
    ds = pydicom.dcmread(path)
    x = ds.pixel_array.astype(np.float64)
    x = x * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    # PS3.3 C.11.2.1.2.1 linear window to 0..255, as DCMTK applies it
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(y, 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(a.dir, "*.dcm")))
    secs, checksum = [], 0
    for r in range(a.reps + 1):  # the first pass warms the page cache and is dropped
        t0 = time.perf_counter()
        out = [decode(p) for p in paths]
        s = time.perf_counter() - t0
        checksum = int(sum(int(o.reshape(-1)[::4099].sum()) for o in out))
        if r > 0:
            secs.append(s)
    med = statistics.median(secs)
    print(json.dumps({"images": len(paths), "seconds_all": secs, "seconds_median": med,
                      "images_per_s": len(paths) / med, "checksum": checksum}))


if __name__ == "__main__":
    main()

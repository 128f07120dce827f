#!/usr/bin/env python3
"""Fits the rational odd functions of the Cranelift backend
(backends/cranelift/src/math.rs): f(x) ~ x P(x^2) / Q(x^2) on [0, L], Q(0) = 1,
with x clamped to [-L, L] (beyond L the function is +-1 in f32).

  erf:  L = 4, P and Q of degree 5
  tanh: L = 9, P and Q of degree 4

Iterated linearised least squares (Loeb's method) in f64 on absolute error,
then the f32 coefficients evaluated with f32 Horner steps, as the generated
code does, against the f64 function over the backend's test grid.

Usage: fit_rational.py erf|tanh   (prints the coefficients and the worst f32 error)
"""

import math
import sys

import numpy as np

FUNCTIONS = {
    # name: (f, clamp L, degree of P, degree of Q)
    "erf": (math.erf, 4.0, 5, 5),
    "tanh": (math.tanh, 9.0, 4, 4),
}


def fit(f, lim, p, q, iterations=30):
    n = 4000
    x = np.unique(np.concatenate([np.linspace(0, lim, n), lim * np.sin(np.linspace(0, np.pi / 2, n)) ** 2]))
    x = x[x > 0]
    g = np.array([f(v) / v for v in x])
    t = x * x
    weight = np.ones_like(t)
    for _ in range(iterations):
        # g Q - P = 0 with Q(0) = 1; rows scaled by x: the error of f = x g.
        a = np.hstack([np.vstack([t**i for i in range(p + 1)]).T, -np.vstack([g * t**j for j in range(1, q + 1)]).T])
        a = a / weight[:, None] * x[:, None]
        b = g / weight * x
        c, *_ = np.linalg.lstsq(a, b, rcond=None)
        num, den = c[: p + 1], np.concatenate([[1.0], c[p + 1 :]])
        weight = np.polyval(den[::-1], t)
    return num.astype(np.float32), den.astype(np.float32)


def horner(c, t):
    acc = np.full_like(t, c[-1])
    for k in c[-2::-1]:
        acc = (acc * t + k).astype(np.float32)
    return acc


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in FUNCTIONS:
        sys.exit(f"usage: fit_rational.py {'|'.join(FUNCTIONS)}")
    f, lim, p, q = FUNCTIONS[name]
    num, den = fit(f, lim, p, q)
    print("P", [float(v) for v in num])
    print("Q", [float(v) for v in den])
    # The grid of backends/cranelift/src/tests.rs (generated_math_matches_libm).
    xs = [i * 0.01 for i in range(-2000, 2001)] + [-100, -88, -87, -20, -9.5, 9.5, 20, 87, 88, 88.8, 100, 1e-7, -1e-7]
    xs = np.array(xs, dtype=np.float32)
    xc = np.clip(xs, -lim, lim).astype(np.float32)
    t = (xc * xc).astype(np.float32)
    y = np.clip((xc * horner(num, t) / horner(den, t)).astype(np.float32), -1, 1)
    want = np.array([np.float32(f(float(v))) for v in xs], dtype=np.float64)
    rel = np.abs(y - want) / np.maximum(np.abs(want), 1e-30)
    print(f"worst relative error in f32: {rel.max():.2e} at x = {xs[rel.argmax()]}")


if __name__ == "__main__":
    main()

/* Runs a model compiled by `sharc compile` (see run.sh): reads the input
 * from a raw little-endian f32 file, runs the model, writes the output the
 * same way and prints its first values. */
#include <stdio.h>
#include <stdlib.h>

#include "mlp.h"

static int read_all(const char *path, float *dst, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t got = fread(dst, sizeof(float), n, f);
    fclose(f);
    if (got != n) {
        fprintf(stderr, "%s: expected %zu floats, read %zu\n", path, n, got);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s input.bin output.bin\n", argv[0]);
        return 2;
    }
    float *x = malloc(MLP_INPUT0_ELEMENTS * sizeof(float));
    float *y = malloc(MLP_OUTPUT0_ELEMENTS * sizeof(float));
    /* aligned_alloc wants a multiple of the alignment. */
    size_t ws_bytes = (MLP_WORKSPACE_BYTES + 63) / 64 * 64;
    void *ws = aligned_alloc(64, ws_bytes ? ws_bytes : 64);
    if (!x || !y || !ws || read_all(argv[1], x, MLP_INPUT0_ELEMENTS) != 0) {
        return 1;
    }
    const void *inputs[] = {x};
    void *outputs[] = {y};
    int rc = mlp_run(inputs, outputs, ws);
    if (rc != 0) {
        fprintf(stderr, "mlp_run returned %d\n", rc);
        return 1;
    }
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(y, sizeof(float), MLP_OUTPUT0_ELEMENTS, f) != MLP_OUTPUT0_ELEMENTS) {
        perror(argv[2]);
        return 1;
    }
    fclose(f);
    printf("probs[0][0..4] = %f %f %f %f\n", y[0], y[1], y[2], y[3]);
    free(x);
    free(y);
    free(ws);
    return 0;
}

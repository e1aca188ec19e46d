/*
 * bd-generate: continue a prompt with a .bd2 model through the C API, streaming the text.
 *
 * Build (from the repository root):
 *   cargo build --release -p bd-runtime && cc -O2 -Iruntime/include examples/c/generate.c target/release/libbd_runtime.a -lpthread -ldl -lm -o bd-generate
 * Run:
 *   ./bd-generate MODEL.bd2 "Once upon a time" [N_TOKENS=128] [TEMPERATURE=0.8] [SEED=0]
 *
 * Prints what `bd-run MODEL.bd2 --prompt PROMPT -n N --temp T --seed S` prints on stdout.
 */
#include "bitdistiller.h"

#include <stdio.h>
#include <stdlib.h>

static int print_token(int32_t token, const char *text, size_t text_len, void *user_data) {
    (void)token;
    (void)user_data;
    fwrite(text, 1, text_len, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop generation */
}

static int fail(const char *what) {
    fprintf(stderr, "bd-generate: %s: %s\n", what, bd_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.bd2 PROMPT [N_TOKENS] [TEMPERATURE] [SEED]\n", argv[0]);
        return 2;
    }
    uint32_t n = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 128;

    bd_model *model = NULL;
    if (bd_model_load(argv[1], &model) != BD_OK) return fail("cannot load the model");
    bd_model_info info;
    bd_model_get_info(model, &info);
    fprintf(stderr, "bd-generate: %s: %s, %u layers, vocab %u, context %u (libbd_runtime %s)\n", argv[1], info.format,
            info.num_layers, info.vocab_size, info.max_context, bd_version());

    bd_session_params sp = bd_session_default_params();
    if (argc > 5) sp.seed = strtoull(argv[5], NULL, 10);
    bd_session *session = NULL;
    if (bd_session_new(model, &sp, &session) != BD_OK) {
        bd_model_free(model);
        return fail("cannot create a session");
    }

    bd_sampler_params params = bd_sampler_default_params();
    if (argc > 4) params.temperature = strtof(argv[4], NULL);
    fputs(argv[2], stdout);
    uint32_t generated = 0;
    bd_status status = bd_generate(session, argv[2], &params, n, print_token, NULL, &generated);
    fputc('\n', stdout);
    if (status != BD_OK) fail("generation failed");
    else fprintf(stderr, "bd-generate: %u tokens\n", generated);

    bd_session_free(session); /* sessions first: bd_model_free returns BD_ERR_BUSY while they live */
    bd_model_free(model);
    return status == BD_OK ? 0 : 1;
}

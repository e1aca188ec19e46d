/*
 * The C API as a C program sees it, written only against bitdistiller.h. Run by tests/c_abi.rs:
 *
 *   c_api_test MODEL PROMPT N MISSING CORRUPT TEMP TOP_K TOP_P MIN_P REPEAT_PENALTY SEED
 *
 * stdout: what `bd-run MODEL --prompt PROMPT -n N --temp TEMP --top-k TOP_K --top-p TOP_P
 * --min-p MIN_P --repeat-penalty REPEAT_PENALTY --seed SEED` prints (the prompt, the generated
 * text, a newline). stderr: "tokens: ID ID ..." (the generated tokens), "info: ...", the error
 * messages, and a line per failed check. Exit status 0 when every check passed.
 */
#include "bitdistiller.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            fprintf(stderr, "FAIL line %d: ", __LINE__);   \
            fprintf(stderr, __VA_ARGS__);                  \
            fprintf(stderr, " [%s]\n", bd_last_error());  \
            failures++;                                    \
        }                                                  \
    } while (0)

#define EXPECT(call, status) CHECK((call) == (status), "%s should give %s", #call, #status)

#define MAX_TOKENS 4096

typedef struct collected {
    int32_t tokens[MAX_TOKENS];
    size_t n;
    char text[1 << 16];
    size_t text_len;
    size_t stop_after; /* 0 = never stop */
} collected;

static int collect(int32_t token, const char *text, size_t text_len, void *user_data) {
    collected *c = user_data;
    if (c->n < MAX_TOKENS) c->tokens[c->n++] = token;
    if (text[text_len] != '\0') failures++, fprintf(stderr, "FAIL: callback text is not NUL-terminated\n");
    if (c->text_len + text_len < sizeof c->text) {
        memcpy(c->text + c->text_len, text, text_len);
        c->text_len += text_len;
    }
    return c->stop_after != 0 && c->n >= c->stop_after;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The sampling options of the command line (set in main). */
static bd_sampler_params options;
static bd_session_params session_options;

/* Generation on its own session, for the threads sharing one model. */
typedef struct job {
    const bd_model *model;
    const char *prompt;
    uint32_t n;
    collected out;
    bd_status status;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    bd_session_params sp = session_options;
    sp.threads = 1;
    bd_session *s = NULL;
    j->status = bd_session_new(j->model, &sp, &s);
    if (j->status != BD_OK) return NULL;
    j->status = bd_generate(s, j->prompt, &options, j->n, collect, &j->out, NULL);
    bd_session_free(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 12) {
        fprintf(stderr, "usage: %s MODEL PROMPT N MISSING CORRUPT TEMP TOP_K TOP_P MIN_P REPEAT_PENALTY SEED\n", argv[0]);
        return 2;
    }
    const char *path = argv[1], *prompt = argv[2], *missing = argv[4], *corrupt = argv[5];
    uint32_t n = (uint32_t)atoi(argv[3]);
    options = bd_sampler_default_params();
    options.temperature = strtof(argv[6], NULL);
    options.top_k = (uint32_t)atoi(argv[7]);
    options.top_p = strtof(argv[8], NULL);
    options.min_p = strtof(argv[9], NULL);
    options.repeat_penalty = strtof(argv[10], NULL);
    session_options = bd_session_default_params();
    session_options.seed = strtoull(argv[11], NULL, 10);
    session_options.threads = 2;
    int plain_greedy = options.temperature == 0.0f && options.repeat_penalty == 1.0f;

    /* ---- version, and errors before anything exists ---- */
    CHECK(bd_abi_version() == BD_ABI_VERSION, "ABI version %u", bd_abi_version());
    CHECK(strlen(bd_version()) > 0, "empty version");
    CHECK(strcmp(bd_last_error(), "") == 0, "no error yet, but bd_last_error() says something");

    bd_model *model = (bd_model *)1;
    EXPECT(bd_model_load(missing, &model), BD_ERR_IO);
    CHECK(model == NULL, "a failed load leaves *out NULL");
    CHECK(strstr(bd_last_error(), missing) != NULL, "the message names the missing file");
    fprintf(stderr, "missing: %s\n", bd_last_error());
    EXPECT(bd_model_load(corrupt, &model), BD_ERR_BAD_MODEL);
    CHECK(model == NULL && strlen(bd_last_error()) > 0, "a corrupt file gives a message");
    fprintf(stderr, "corrupt: %s\n", bd_last_error());
    EXPECT(bd_model_load(NULL, &model), BD_ERR_NULL_ARGUMENT);
    EXPECT(bd_model_load(path, NULL), BD_ERR_NULL_ARGUMENT);
    EXPECT(bd_model_load("\xff\xfe.bd2", &model), BD_ERR_INVALID_UTF8);
    EXPECT(bd_model_load_from_memory(NULL, 10, &model), BD_ERR_NULL_ARGUMENT);
    EXPECT(bd_model_load_from_memory((const uint8_t *)"BD2", 3, &model), BD_ERR_BAD_MODEL);

    /* ---- the model, from the file and from memory ---- */
    if (bd_model_load(path, &model) != BD_OK) {
        fprintf(stderr, "FAIL: cannot load %s: %s\n", path, bd_last_error());
        return 1;
    }
    bd_model_info info;
    EXPECT(bd_model_get_info(model, &info), BD_OK);
    EXPECT(bd_model_get_info(model, NULL), BD_ERR_NULL_ARGUMENT);
    EXPECT(bd_model_get_info(NULL, &info), BD_ERR_NULL_ARGUMENT);
    fprintf(stderr, "info: vocab %u hidden %u layers %u heads %u/%u context %u format %s group %u bpw %.3f bytes %llu params %llu\n",
            info.vocab_size, info.hidden_size, info.num_layers, info.num_heads, info.num_kv_heads, info.max_context,
            info.format, info.group_size, info.bits_per_weight, (unsigned long long)info.file_bytes,
            (unsigned long long)info.params);
    size_t image_len = 0;
    unsigned char *image = read_file(path, &image_len);
    CHECK(image != NULL && image_len == info.file_bytes, "file_bytes is the file's size");
    bd_model *from_memory = NULL;
    EXPECT(bd_model_load_from_memory(image, image_len, &from_memory), BD_OK);
    free(image); /* the library copied it */
    bd_model_info info2;
    EXPECT(bd_model_get_info(from_memory, &info2), BD_OK);
    CHECK(info.vocab_size == info2.vocab_size && info.num_layers == info2.num_layers && info.file_bytes == info2.file_bytes &&
              info.params == info2.params && info.bits_per_weight == info2.bits_per_weight &&
              strcmp(info.format, info2.format) == 0,
          "the same info from memory");

    /* ---- tokens ---- */
    size_t n_prompt = 0;
    EXPECT(bd_tokenize(model, prompt, strlen(prompt), 1, NULL, 0, &n_prompt), BD_ERR_BUFFER_TOO_SMALL);
    CHECK(n_prompt >= 2, "the needed count (%zu) is reported", n_prompt);
    int32_t *prompt_ids = malloc(n_prompt * sizeof *prompt_ids);
    EXPECT(bd_tokenize(model, prompt, strlen(prompt), 1, prompt_ids, n_prompt, &n_prompt), BD_OK);
    CHECK(prompt_ids[0] == info.bos_id, "BOS first");
    int32_t ids2[MAX_TOKENS];
    size_t n2 = 0;
    EXPECT(bd_tokenize(from_memory, prompt, strlen(prompt), 1, ids2, MAX_TOKENS, &n2), BD_OK);
    CHECK(n2 == n_prompt && memcmp(ids2, prompt_ids, n2 * sizeof *ids2) == 0, "same tokens from either model");
    EXPECT(bd_model_free(from_memory), BD_OK);
    EXPECT(bd_tokenize(model, "\xc3\x28", 2, 0, ids2, MAX_TOKENS, &n2), BD_ERR_INVALID_UTF8);
    EXPECT(bd_tokenize(model, NULL, 3, 0, ids2, MAX_TOKENS, &n2), BD_ERR_NULL_ARGUMENT);
    EXPECT(bd_tokenize(model, prompt, strlen(prompt), 0, ids2, MAX_TOKENS, NULL), BD_ERR_NULL_ARGUMENT);
    EXPECT(bd_tokenize(model, NULL, 0, 1, ids2, MAX_TOKENS, &n2), BD_OK);
    CHECK(n2 == 1 && ids2[0] == info.bos_id, "empty text with BOS is just BOS");

    char text[4096];
    size_t text_len = 0;
    EXPECT(bd_detokenize(model, prompt_ids, n_prompt, text, 2, &text_len), BD_ERR_BUFFER_TOO_SMALL);
    CHECK(text_len == strlen(prompt), "needed length %zu", text_len);
    EXPECT(bd_detokenize(model, prompt_ids, n_prompt, text, sizeof text, &text_len), BD_OK);
    CHECK(strcmp(text, prompt) == 0, "detokenize(tokenize(p)) == p, got \"%s\"", text);
    int32_t bad = (int32_t)info.vocab_size;
    EXPECT(bd_detokenize(model, &bad, 1, text, sizeof text, &text_len), BD_ERR_INVALID_ARGUMENT);
    bad = -1;
    EXPECT(bd_detokenize(model, &bad, 1, text, sizeof text, &text_len), BD_ERR_INVALID_ARGUMENT);
    const char *piece = NULL;
    size_t piece_len = 0;
    EXPECT(bd_token_piece(model, info.eos_id, &piece, &piece_len), BD_OK);
    CHECK(piece != NULL && piece_len == 0, "EOS has no text");
    EXPECT(bd_token_piece(model, bad, &piece, &piece_len), BD_ERR_INVALID_ARGUMENT);

    /* ---- a session: greedy generation ---- */
    bd_session_params sp = session_options;
    bd_session *session = (bd_session *)1;
    EXPECT(bd_session_new(NULL, &sp, &session), BD_ERR_NULL_ARGUMENT);
    CHECK(session == NULL, "a failed bd_session_new leaves *out NULL");
    EXPECT(bd_session_new(model, &sp, &session), BD_OK);
    EXPECT(bd_model_free(model), BD_ERR_BUSY);

    const float *logits = NULL;
    size_t n_vocab = 0;
    int32_t token = -1;
    EXPECT(bd_session_logits(session, &logits, &n_vocab), BD_ERR_NO_LOGITS);
    EXPECT(bd_session_sample(session, NULL, &token), BD_ERR_NO_LOGITS);
    EXPECT(bd_generate(session, "", NULL, 4, NULL, NULL, NULL), BD_ERR_INVALID_ARGUMENT);
    EXPECT(bd_generate(session, "\xff", NULL, 4, NULL, NULL, NULL), BD_ERR_INVALID_UTF8);
    bd_sampler_params bad_params = options;
    bad_params.top_p = 2.0f;
    EXPECT(bd_generate(session, prompt, &bad_params, 4, NULL, NULL, NULL), BD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(bd_last_error(), "top_p") != NULL, "the message names the field");

    static collected gen;
    bd_sampler_params g = options;
    uint32_t n_generated = 0;
    EXPECT(bd_generate(session, prompt, &g, n, collect, &gen, &n_generated), BD_OK);
    CHECK(n_generated == gen.n, "n_generated %u == callbacks %zu", n_generated, gen.n);
    uint32_t pos = 0;
    EXPECT(bd_session_position(session, &pos), BD_OK);
    CHECK(pos == n_prompt + gen.n, "position %u after %zu prompt and %zu generated tokens", pos, n_prompt, gen.n);

    /* What bd-run prints: the prompt, the continuation, a newline. */
    fwrite(prompt, 1, strlen(prompt), stdout);
    fwrite(gen.text, 1, gen.text_len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    fprintf(stderr, "tokens:");
    for (size_t i = 0; i < gen.n; i++) fprintf(stderr, " %d", gen.tokens[i]);
    fprintf(stderr, "\n");

    /* The same tokens by hand: eval, logits, sample (reset restarts the random stream). */
    EXPECT(bd_session_reset(session), BD_OK);
    EXPECT(bd_session_position(session, &pos), BD_OK);
    CHECK(pos == 0, "reset forgets every token");
    EXPECT(bd_session_logits(session, &logits, &n_vocab), BD_ERR_NO_LOGITS);
    EXPECT(bd_session_eval(session, prompt_ids, n_prompt), BD_OK);
    for (size_t i = 0; i < gen.n; i++) {
        EXPECT(bd_session_logits(session, &logits, &n_vocab), BD_OK);
        CHECK(n_vocab == info.vocab_size, "one logit per vocabulary entry");
        size_t best = 0;
        for (size_t v = 1; v < n_vocab; v++)
            if (logits[v] > logits[best]) best = v;
        EXPECT(bd_session_sample(session, &g, &token), BD_OK);
        CHECK(token == gen.tokens[i] && (!plain_greedy || (size_t)token == best),
              "token %zu: sampled %d, argmax %zu, generated %d", i, token, best, gen.tokens[i]);
        if (token == info.eos_id) break;
        EXPECT(bd_session_eval(session, &token, 1), BD_OK);
    }
    EXPECT(bd_session_eval(session, NULL, 1), BD_ERR_NULL_ARGUMENT);
    EXPECT(bd_session_eval(session, &token, 0), BD_ERR_INVALID_ARGUMENT);
    EXPECT(bd_session_eval(session, &bad, 1), BD_ERR_INVALID_ARGUMENT);
    EXPECT(bd_session_sample(session, &g, NULL), BD_ERR_NULL_ARGUMENT);

    /* A callback that stops, and continuing with a NULL prompt. */
    static collected stopped;
    stopped.stop_after = 3;
    EXPECT(bd_session_reset(session), BD_OK);
    EXPECT(bd_generate(session, prompt, &g, n, collect, &stopped, &n_generated), BD_OK);
    CHECK(n_generated == 3 && stopped.n == 3, "the callback stopped after 3 tokens (%u)", n_generated);
    stopped.stop_after = 0;
    EXPECT(bd_generate(session, NULL, &g, n - 3, collect, &stopped, &n_generated), BD_OK);
    CHECK(stopped.n == gen.n && memcmp(stopped.tokens, gen.tokens, gen.n * sizeof(int32_t)) == 0,
          "3 tokens, then the rest with a NULL prompt: the same %zu tokens", gen.n);
    CHECK(stopped.text_len == gen.text_len && memcmp(stopped.text, gen.text, gen.text_len) == 0, "and the same text");

    /* A full context. */
    bd_session *small = NULL;
    bd_session_params tiny = sp;
    tiny.context = 4;
    EXPECT(bd_session_new(model, &tiny, &small), BD_OK);
    int32_t five[5] = {info.bos_id, prompt_ids[1], prompt_ids[1], prompt_ids[1], prompt_ids[1]};
    EXPECT(bd_session_eval(small, five, 5), BD_ERR_CONTEXT_FULL);
    EXPECT(bd_session_position(small, &pos), BD_OK);
    CHECK(pos == 0, "a failed eval evaluates nothing");
    EXPECT(bd_session_eval(small, five, 3), BD_OK);
    EXPECT(bd_session_eval(small, five, 2), BD_ERR_CONTEXT_FULL);
    static collected to_the_end;
    EXPECT(bd_generate(small, NULL, &g, 10, collect, &to_the_end, &n_generated), BD_OK);
    EXPECT(bd_session_position(small, &pos), BD_OK);
    CHECK(pos == 4 && (n_generated == 2 || to_the_end.tokens[0] == info.eos_id),
          "generation stops at the end of the context (%u tokens, position %u)", n_generated, pos);
    tiny.context = info.max_context + 1;
    bd_session *too_big = NULL;
    EXPECT(bd_session_new(model, &tiny, &too_big), BD_ERR_INVALID_ARGUMENT);
    EXPECT(bd_session_free(small), BD_OK);

    /* Two threads, one model, a session each: the same tokens. */
    static job jobs[2];
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) {
        jobs[i].model = model;
        jobs[i].prompt = prompt;
        jobs[i].n = n;
        pthread_create(&threads[i], NULL, run_job, &jobs[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(threads[i], NULL);
        CHECK(jobs[i].status == BD_OK, "thread %d: status %d", i, jobs[i].status);
        CHECK(jobs[i].out.n == gen.n && memcmp(jobs[i].out.tokens, gen.tokens, gen.n * sizeof(int32_t)) == 0,
              "thread %d generated the same tokens", i);
    }

    /* ---- freeing, and handles used after that ---- */
    EXPECT(bd_session_free(session), BD_OK);
    EXPECT(bd_session_eval(session, prompt_ids, n_prompt), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_generate(session, prompt, &g, 4, NULL, NULL, NULL), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_session_position(session, &pos), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_session_free(session), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_session_free(NULL), BD_OK);
    EXPECT(bd_session_eval((bd_session *)model, prompt_ids, n_prompt), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_model_free(model), BD_OK);
    EXPECT(bd_model_get_info(model, &info), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_session_new(model, &sp, &session), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_model_free(model), BD_ERR_INVALID_HANDLE);
    EXPECT(bd_model_free(NULL), BD_OK);
    free(prompt_ids);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    fprintf(stderr, "all checks passed\n");
    return 0;
}

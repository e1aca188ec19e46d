/*
 * bitdistiller.h: the C ABI of the BitDistiller runtime (bd-runtime).
 *
 * Runs .bd2 models (2-4 bit LLaMA-family language models) on CPUs.
 *
 * Build (static library; the shared one is target/release/libbd_runtime.so):
 *   cargo build --release -p bd-runtime
 *   cc -O2 -Iruntime/include prog.c target/release/libbd_runtime.a -lpthread -ldl -lm -o prog
 *
 * Conventions
 *  - Every function that can fail returns a bd_status; BD_OK is 0. On failure, bd_last_error()
 *    returns a message for the calling thread.
 *  - Handles are opaque. Whatever bd_model_load* / bd_session_new creates, the matching bd_*_free
 *    releases. Freeing NULL is a no-op that returns BD_OK.
 *  - A required pointer that is NULL gives BD_ERR_NULL_ARGUMENT. Pointers documented as optional
 *    may be NULL.
 *  - Strings are UTF-8, NUL-terminated unless a length is given; invalid UTF-8 gives
 *    BD_ERR_INVALID_UTF8. Paths are strings too.
 *  - Token ids are int32_t in 0..vocab_size; anything else gives BD_ERR_INVALID_ARGUMENT.
 *  - Output buffers come with their capacity; a short buffer gives BD_ERR_BUFFER_TOO_SMALL with the
 *    needed size written where the function says.
 *  - A function that creates something writes NULL to its out-pointer when it fails.
 *
 * Ownership and threads
 *  - A bd_model is immutable after loading and may be used by any number of threads at once, and by
 *    any number of sessions.
 *  - A model must outlive its sessions: bd_model_free on a model that still has live sessions
 *    returns BD_ERR_BUSY and frees nothing.
 *  - A bd_session is NOT thread-safe: use it from one thread at a time (which thread may change
 *    between calls). A call made while another thread is inside a call on the same session returns
 *    BD_ERR_BUSY without doing anything. Sessions of one model are independent and may run in
 *    parallel, each on its own threads.
 *  - A freed handle must not be used again. The library keeps a registry of live handles and returns
 *    BD_ERR_INVALID_HANDLE for a pointer it does not know (freed, never created, or a model passed as
 *    a session); it cannot catch a freed pointer whose address a newer handle happens to reuse.
 *  - Memory returned by the library (logits, token pieces, callback text, version and error strings)
 *    is owned by the library; each function says how long it stays valid. Never free it.
 *  - No Rust panic crosses this boundary: a failure inside the library becomes BD_ERR_INTERNAL. A
 *    session that failed that way answers BD_ERR_INTERNAL from then on; free it.
 *  - After warm-up, bd_session_eval, bd_session_sample and the per-token loop of bd_generate allocate
 *    no memory (tokenizing a prompt does). Each session runs its forward passes on its own pool of
 *    `threads` workers, one of which receives the session's calls from whichever thread makes them,
 *    plus one idle thread that holds that worker; bd_session_free stops them all.
 *  - Callbacks must return normally: no C++ exception or longjmp may leave them.
 */
#ifndef BITDISTILLER_H
#define BITDISTILLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Incremented on any incompatible change of this header (functions, structs, enum values). */
#define BD_ABI_VERSION 1

/* New codes are only ever appended. */
typedef enum bd_status {
    BD_OK = 0,
    BD_ERR_NULL_ARGUMENT = 1,     /* a required pointer was NULL */
    BD_ERR_INVALID_ARGUMENT = 2,  /* an argument is out of range (named in bd_last_error) */
    BD_ERR_INVALID_UTF8 = 3,      /* a string is not valid UTF-8 */
    BD_ERR_IO = 4,                /* the file could not be read */
    BD_ERR_BAD_MODEL = 5,         /* the data is not a valid .bd2 model (corrupt, truncated, ...) */
    BD_ERR_BUFFER_TOO_SMALL = 6,  /* an output buffer is too small; the needed size was written */
    BD_ERR_CONTEXT_FULL = 7,      /* the session's context has no room for these tokens */
    BD_ERR_INVALID_HANDLE = 8,    /* a handle that was freed or never created */
    BD_ERR_BUSY = 9,              /* the model still has live sessions, or the session is in use */
    BD_ERR_INTERNAL = 10,         /* a bug in the library; the message says what */
    BD_ERR_NO_LOGITS = 11,        /* the session has no logits yet: evaluate tokens first */
    BD_ERR_SYSTEM = 12            /* the operating system refused a resource (threads) */
} bd_status;

typedef struct bd_model bd_model;
typedef struct bd_session bd_session;

/* The ABI version the library was built with (compare with BD_ABI_VERSION). */
uint32_t bd_abi_version(void);
/* The library's version, e.g. "0.1.0". Static storage. */
const char *bd_version(void);
/* The message of the calling thread's most recent failed call ("" if none yet). Successful calls
 * leave it alone. The string is valid until the thread's next call into the library. */
const char *bd_last_error(void);

/* ---- models ---------------------------------------------------------------------------------- */

/* Load a .bd2 file: memory-mapped, fully validated, every tensor checksum verified.
 * A missing or unreadable file gives BD_ERR_IO, a corrupt one BD_ERR_BAD_MODEL. */
bd_status bd_model_load(const char *path, bd_model **out);
/* Load a .bd2 image from memory. The bytes are copied: the caller may free `data` on return. */
bd_status bd_model_load_from_memory(const uint8_t *data, size_t len, bd_model **out);
/* Free a model. BD_ERR_BUSY (nothing freed) while sessions of it are alive. */
bd_status bd_model_free(bd_model *model);

typedef struct bd_model_info {
    uint32_t vocab_size;
    uint32_t hidden_size;
    uint32_t intermediate_size;
    uint32_t num_layers;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t max_context;    /* the most tokens a session can hold */
    int32_t bos_id;
    int32_t eos_id;
    uint32_t group_size;     /* quantization group; 0 for float formats */
    double bits_per_weight;  /* of the quantized block linears (codes and group parameters); 0 when
                                nothing is quantized */
    uint64_t file_bytes;     /* size of the .bd2 image */
    uint64_t params;         /* parameters in all tensors */
    char format[16];         /* "int2", "int3", "int4", "nf3", "nf4", "f16", "bf16", "f32"; NUL-terminated */
} bd_model_info;

bd_status bd_model_get_info(const bd_model *model, bd_model_info *out);

/* ---- tokens ---------------------------------------------------------------------------------- */

/* Encode `len` bytes of UTF-8 `text` (which may be NULL when len is 0), with BOS first when
 * add_bos != 0. Writes up to `capacity` ids to `tokens` (NULL allowed when capacity is 0) and the
 * count to `*n_tokens`; if more than `capacity` are needed, nothing is written to `tokens` and the
 * result is BD_ERR_BUFFER_TOO_SMALL with the needed count in *n_tokens. */
bd_status bd_tokenize(const bd_model *model, const char *text, size_t len, int add_bos, int32_t *tokens, size_t capacity,
                      size_t *n_tokens);
/* Decode ids to UTF-8 text (special tokens such as BOS and EOS skipped), NUL-terminated in `buf`.
 * `*len` gets the text's length without the NUL. If `capacity` < *len + 1, the result is
 * BD_ERR_BUFFER_TOO_SMALL and nothing is written to `buf` (NULL allowed when capacity is 0).
 * `tokens` may be NULL when n_tokens is 0. */
bd_status bd_detokenize(const bd_model *model, const int32_t *tokens, size_t n_tokens, char *buf, size_t capacity,
                        size_t *len);
/* The bytes one token adds to a text after other text: " the" for "▁the", one raw byte for a
 * byte-fallback token such as <0xE2> (so a piece may be part of a UTF-8 character), "" for special
 * tokens. Concatenating the pieces of the tokens that follow a prompt gives their text. `*piece`
 * points into the model (not NUL-terminated) and stays valid until the model is freed. */
bd_status bd_token_piece(const bd_model *model, int32_t token, const char **piece, size_t *len);

/* ---- sessions -------------------------------------------------------------------------------- */

typedef struct bd_session_params {
    uint32_t context;  /* tokens of context (KV cache); 0 = the model's max_context */
    uint32_t threads;  /* worker threads; 0 = the number of physical cores */
    uint64_t seed;     /* seed of the sampler's random stream (0 is a seed like any other) */
} bd_session_params;

/* Defaults: context 0 (the model's maximum), threads 0 (all physical cores), seed 0. */
bd_session_params bd_session_default_params(void);
/* A session: the KV cache, every buffer the forward pass needs, a thread pool and a sampler, all
 * allocated here. `params` is optional (NULL = the defaults). */
bd_status bd_session_new(const bd_model *model, const bd_session_params *params, bd_session **out);
/* Forget all tokens (the KV cache and the logits) and restart the random stream from the seed:
 * the session then behaves as a new one. Keeps the buffers. */
bd_status bd_session_reset(bd_session *session);
/* Restart the random stream from `seed` (the tokens are kept). */
bd_status bd_session_set_seed(bd_session *session, uint64_t seed);
/* Free a session and its threads. */
bd_status bd_session_free(bd_session *session);
/* Tokens held so far (the position the next token takes). */
bd_status bd_session_position(const bd_session *session, uint32_t *pos);

/* Evaluate `n_tokens` (>= 1) tokens after those already held, in batches. Afterwards
 * bd_session_logits gives the next-token logits after the last of them. On any error (a bad id,
 * BD_ERR_CONTEXT_FULL) nothing is evaluated. */
bd_status bd_session_eval(bd_session *session, const int32_t *tokens, size_t n_tokens);
/* The next-token logits (vocab_size floats), owned by the session and valid until its next
 * eval, reset, generate or free. BD_ERR_NO_LOGITS before the first eval and after a reset. */
bd_status bd_session_logits(const bd_session *session, const float **logits, size_t *n_vocab);

/* ---- sampling and generation ----------------------------------------------------------------- */

/* bd-run's sampling options (--temp, --top-k, --top-p, --min-p, --repeat-penalty,
 * --repeat-last-n; its --seed is the session's seed). Applied in llama.cpp's order: repetition
 * penalty, top-k, top-p, min-p, temperature. */
typedef struct bd_sampler_params {
    float temperature;       /* 0 = greedy (the lowest id wins a tie); finite, >= 0 */
    uint32_t top_k;          /* keep the k most likely tokens; 0 = off */
    float top_p;             /* keep the smallest set reaching this probability; in (0, 1], 1 = off */
    float min_p;             /* drop tokens less likely than min_p times the best; in [0, 1], 0 = off */
    float repeat_penalty;    /* for tokens among the last repeat_last_n evaluated; > 0, 1 = off */
    uint32_t repeat_last_n;  /* how many recently evaluated tokens the penalty looks at */
} bd_sampler_params;

/* Defaults equal to bd-run's (llama.cpp's): temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * repeat_penalty 1 (off) over the last 64 tokens. */
bd_sampler_params bd_sampler_default_params(void);

/* Sample one token from the session's current logits; does not evaluate it. `params` is optional
 * (NULL = the defaults). The random stream continues from call to call; a call whose params differ
 * from the previous call's rebuilds the sampler (one allocation). */
bd_status bd_session_sample(bd_session *session, const bd_sampler_params *params, int32_t *token);

/* Called with each new token and the text it completes: UTF-8, possibly empty (while a multi-byte
 * character is incomplete, and for EOS). text[text_len] is a NUL, but the text itself may contain
 * NUL bytes, so use text_len. `text` is valid during the call only. Return 0 to continue, non-zero
 * to stop. The callback runs on the thread that called bd_generate and must not call functions on
 * the same session (they return BD_ERR_BUSY); functions on the model are fine. */
typedef int (*bd_token_callback)(int32_t token, const char *text, size_t text_len, void *user_data);

/* Evaluate `prompt` after the session's current tokens (BOS first when the session is empty), then
 * sample and evaluate up to `max_tokens` tokens, calling `callback` (optional) with each.
 *  - `prompt` may be NULL or "" to continue from the current tokens (BD_ERR_INVALID_ARGUMENT on an
 *    empty session). `params` is optional (NULL = the defaults).
 *  - Generation stops after `max_tokens` tokens, at EOS, when the callback returns non-zero, or when
 *    the context is full. Every generated token except EOS is evaluated (so a later call with a NULL
 *    prompt continues the text), except a last token sampled with the context already full.
 *  - EOS is passed to the callback (its own text is empty) and counted, but not evaluated.
 *  - Bytes of a character left incomplete at the end become U+FFFD in the last token's text;
 *    invalid UTF-8 from byte tokens becomes U+FFFD too.
 *  - With a fresh session (or after bd_session_reset), the tokens are those of
 *    `bd-run MODEL --prompt PROMPT --seed SEED -n MAX_TOKENS` with the same sampling options.
 *  - `*n_generated` (optional) gets the count, also when an error stops generation.
 * A prompt that does not fit gives BD_ERR_CONTEXT_FULL with nothing evaluated; running out of
 * context while generating is a normal stop (BD_OK, and bd_session_position equals the context). */
bd_status bd_generate(bd_session *session, const char *prompt, const bd_sampler_params *params, uint32_t max_tokens,
                      bd_token_callback callback, void *user_data, uint32_t *n_generated);

#ifdef __cplusplus
}
#endif

#endif /* BITDISTILLER_H */

/*
 * bitdistiller.h: the C ABI of the BitDistiller runtime (bd-runtime).
 *
 * Runs .bd2 models (2-4 bit LLaMA-family language models) on CPUs.
 *
 * Conventions
 *  - Every function that can fail returns a bd_status; BD_OK is 0. On failure, bd_last_error()
 *    returns a message for the calling thread (valid until that thread's next call into the library).
 *  - Handles are opaque. Whatever a bd_*_new / bd_model_load* function creates, the matching
 *    bd_*_free releases. Freeing NULL is a no-op.
 *  - Strings are UTF-8 and NUL-terminated unless a length is given. Invalid UTF-8 is an error.
 *  - Token ids are int32_t. Output buffers come with their capacity; a short buffer gives
 *    BD_ERR_BUFFER_TOO_SMALL and the needed size.
 *
 * Ownership and threads
 *  - A bd_model is immutable after loading and may be shared by any number of threads and sessions.
 *    It must outlive its sessions: bd_model_free on a model that still has live sessions returns
 *    BD_ERR_BUSY and frees nothing.
 *  - A bd_session is NOT thread-safe: use each session from one thread at a time. Sessions of the
 *    same model are independent and may run in parallel.
 *  - A freed session pointer must not be used again. The library detects some such misuse (a handle
 *    it no longer knows gives BD_ERR_INVALID_HANDLE) but cannot promise to catch all of it.
 *  - No Rust panic crosses this boundary: an internal failure becomes BD_ERR_INTERNAL.
 *  - bd_session_eval and bd_generate allocate no memory per token.
 */
#ifndef BITDISTILLER_H
#define BITDISTILLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Incremented on any incompatible change of this header. */
#define BD_ABI_VERSION 1

typedef enum bd_status {
    BD_OK = 0,
    BD_ERR_NULL_ARGUMENT = 1,     /* a required pointer was NULL */
    BD_ERR_INVALID_ARGUMENT = 2,  /* an argument is out of range (named in bd_last_error) */
    BD_ERR_INVALID_UTF8 = 3,      /* a string is not valid UTF-8 */
    BD_ERR_IO = 4,                /* the file could not be read */
    BD_ERR_BAD_MODEL = 5,         /* the data is not a valid .bd2 model */
    BD_ERR_BUFFER_TOO_SMALL = 6,  /* an output buffer is too small; the needed size was written */
    BD_ERR_CONTEXT_FULL = 7,      /* the session's context has no room for these tokens */
    BD_ERR_INVALID_HANDLE = 8,    /* a handle that was freed or never created */
    BD_ERR_BUSY = 9,              /* the model still has live sessions */
    BD_ERR_INTERNAL = 10          /* a bug in the library; the message says what */
} bd_status;

typedef struct bd_model bd_model;
typedef struct bd_session bd_session;

/* The ABI version the library was built with (compare with BD_ABI_VERSION). */
uint32_t bd_abi_version(void);
/* The library's version, e.g. "0.1.0". Static storage. */
const char *bd_version(void);
/* The calling thread's last error message ("" if none). Valid until the thread's next call. */
const char *bd_last_error(void);

/* ---- models ---------------------------------------------------------------------------------- */

/* Load a .bd2 file (memory-mapped, validated, checksums verified). */
bd_status bd_model_load(const char *path, bd_model **out);
/* Load a .bd2 image from memory. The bytes are copied: the caller may free `data` on return. */
bd_status bd_model_load_from_memory(const uint8_t *data, size_t len, bd_model **out);
/* Free a model. BD_ERR_BUSY while sessions of it are alive. */
bd_status bd_model_free(bd_model *model);

typedef struct bd_model_info {
    uint32_t vocab_size;
    uint32_t hidden_size;
    uint32_t num_layers;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t max_context;
    int32_t bos_id;
    int32_t eos_id;
    uint32_t group_size;     /* 0 for float formats */
    double bits_per_weight;  /* of the quantized block linears; 0 when nothing is quantized */
    uint64_t file_bytes;
    uint64_t params;
    char format[8];          /* "int2", "nf3", "f32", ... NUL-terminated */
} bd_model_info;

bd_status bd_model_get_info(const bd_model *model, bd_model_info *out);

/* ---- tokens ---------------------------------------------------------------------------------- */

/* Encode `len` bytes of UTF-8 `text` (BOS first when add_bos != 0). Writes up to `capacity` ids to
 * `tokens` and the count to `*n_tokens`; if more are needed, BD_ERR_BUFFER_TOO_SMALL with the
 * needed count in *n_tokens. */
bd_status bd_tokenize(const bd_model *model, const char *text, size_t len, int add_bos, int32_t *tokens, size_t capacity,
                      size_t *n_tokens);
/* Decode ids to UTF-8 text (special tokens skipped), NUL-terminated in `buf`. `*len` gets the text's
 * length without the NUL; if `capacity` < len + 1, BD_ERR_BUFFER_TOO_SMALL. */
bd_status bd_detokenize(const bd_model *model, const int32_t *tokens, size_t n_tokens, char *buf, size_t capacity,
                        size_t *len);

/* ---- sessions -------------------------------------------------------------------------------- */

typedef struct bd_session_params {
    uint32_t context;  /* tokens of context; 0 = the model's max_context */
    uint32_t threads;  /* worker threads; 0 = the number of physical cores */
} bd_session_params;

/* Defaults: context 0 (model's maximum), threads 0 (all cores). */
bd_session_params bd_session_default_params(void);
bd_status bd_session_new(const bd_model *model, const bd_session_params *params, bd_session **out);
/* Forget all tokens (the KV cache); keeps the buffers. */
bd_status bd_session_reset(bd_session *session);
bd_status bd_session_free(bd_session *session);
/* Tokens evaluated so far. */
bd_status bd_session_position(const bd_session *session, uint32_t *pos);

/* Evaluate `n_tokens` tokens after those already evaluated (one batched pass). Afterwards
 * bd_session_logits gives the next-token logits after the last of them. */
bd_status bd_session_eval(bd_session *session, const int32_t *tokens, size_t n_tokens);
/* The next-token logits (vocab_size floats), owned by the session, valid until its next call. */
bd_status bd_session_logits(const bd_session *session, const float **logits, size_t *n_vocab);

/* ---- sampling and generation ----------------------------------------------------------------- */

typedef struct bd_sampler_params {
    float temperature;     /* 0 = greedy */
    uint32_t top_k;        /* 0 = off */
    float top_p;           /* 1 = off */
    float min_p;           /* 0 = off */
    float repeat_penalty;  /* 1 = off */
    uint32_t repeat_last_n;
    uint64_t seed;
} bd_sampler_params;

/* Defaults equal to bd-run's (llama.cpp's): temperature 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * repeat_penalty 1 (off) over the last 64 tokens, seed 0. */
bd_sampler_params bd_sampler_default_params(void);

/* Sample one token from the session's current logits (does not evaluate it). */
bd_status bd_session_sample(bd_session *session, const bd_sampler_params *params, int32_t *token);

/* Called with each new token and its text (UTF-8, possibly empty while a multi-byte character is
 * incomplete; `text` is not NUL-terminated). Return 0 to continue, non-zero to stop. */
typedef int (*bd_token_callback)(int32_t token, const char *text, size_t text_len, void *user_data);

/* Evaluate `prompt` (BOS added) after the session's current tokens and generate up to `max_tokens`
 * tokens, stopping early at EOS or when the callback returns non-zero. `*n_generated` (may be NULL)
 * gets the count. */
bd_status bd_generate(bd_session *session, const char *prompt, const bd_sampler_params *params, uint32_t max_tokens,
                      bd_token_callback callback, void *user_data, uint32_t *n_generated);

#ifdef __cplusplus
}
#endif

#endif /* BITDISTILLER_H */

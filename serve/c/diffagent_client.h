/* A C client for `diffagent serve`: the binary protocol of serve/PROTOCOL.md (version 1), over TCP.
 *
 * One header and one source file (diffagent_client.c), C99 with POSIX sockets and nothing else, so a
 * C or C++ controller can add both to its build:
 *
 *     gcc -std=c99 -O2 -c diffagent_client.c                      (or: make -C serve/c)
 *
 *     dfsv_client *client = dfsv_client_new("127.0.0.1", 8870, NULL, 100);   // token, timeout in ms
 *     dfsv_metadata meta;
 *     if (dfsv_metadata_get(client, &meta) != DFSV_OK) { puts(dfsv_last_error(client)); ... }
 *     float obs[meta.obs_dim], action[meta.act_dim];
 *     int status = dfsv_act(client, obs, 1, meta.obs_dim, NULL, 0, 1, action, meta.act_dim);
 *     ...
 *     dfsv_client_free(client);
 *
 * Every call returns DFSV_OK (0) or a status: the server's ERROR codes are positive, with their numbers
 * from PROTOCOL.md; this library's own are negative. dfsv_last_error() says what went wrong and what
 * to do, in words.
 *
 * Connections. A client connects on its first request (or on dfsv_connect) and sends AUTH first when it
 * has a token. After an error that ends the connection (dfsv_status_ends_connection: a timeout, a
 * reset, the server's fatal errors) it closes its end, and the next call connects afresh; a request
 * that failed that way was not answered and may be sent again. A connection the server closed while
 * it sat unused (its idle timeout, a restart, its slot given to a newcomer) is noticed before the
 * next request goes out and replaced, so a paused control loop sees no error. Two statuses want a
 * decision rather than a retry: DFSV_UNAUTHORIZED (fix the token) and DFSV_BUSY (every slot of the
 * server is taken: back off before trying again).
 *
 * Timeouts. timeout_ms bounds each call as a whole: the connect and AUTH, sending the request and
 * reading its reply. A control loop at f Hz wants a timeout of about one period. timeout_ms <= 0
 * waits forever, which a robot should not do.
 *
 * Not thread-safe: use one client per thread. Signals: sends never raise SIGPIPE.
 */
#ifndef DIFFAGENT_CLIENT_H
#define DIFFAGENT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DFSV_PROTOCOL_VERSION 1
#define DFSV_DEFAULT_PORT 8870
/* The largest reply payload accepted, as the server's default --max-payload: a reply claiming more
 * is not trusted (PROTOCOL.md, FRAME_TOO_LARGE). */
#define DFSV_MAX_PAYLOAD (16u * 1024u * 1024u)

typedef enum dfsv_status {
    DFSV_OK = 0,
    /* The server's ERROR codes (PROTOCOL.md, "Errors"). */
    DFSV_BAD_MAGIC = 1,           /* ends the connection */
    DFSV_UNSUPPORTED_VERSION = 2, /* ends the connection */
    DFSV_FRAME_TOO_LARGE = 3,     /* ends the connection: split the batch */
    DFSV_UNKNOWN_TYPE = 4,
    DFSV_BAD_DTYPE = 5,
    DFSV_BAD_SHAPE = 6,           /* rows or obs_dim do not match the policy, or the noise length is wrong */
    DFSV_NON_FINITE = 7,          /* a NaN or an infinity in the observations or the noise */
    DFSV_BAD_FLAGS = 8,
    DFSV_UNAUTHORIZED = 9,        /* ends the connection: a missing or wrong token */
    DFSV_BUSY = 10,               /* ends the connection: the server holds no slot for it; back off */
    DFSV_INTERNAL = 11,           /* the model failed to run: see the server's log */
    DFSV_TIMED_OUT = 12,          /* ends the connection: no AUTH in time, or idle too long */
    /* This library's own. */
    DFSV_E_CONNECT = -1,          /* nothing answered at host:port, or the connect timed out */
    DFSV_E_TIMEOUT = -2,          /* no complete reply within timeout_ms; the connection was dropped */
    DFSV_E_CLOSED = -3,           /* the server closed or reset the connection during the call */
    DFSV_E_PROTOCOL = -4,         /* the reply broke the protocol (not a frame, wrong id, type or shape) */
    DFSV_E_ARGUMENT = -5,         /* a bad argument: NULL, rows of 0, a buffer too small */
    DFSV_E_NOMEM = -6             /* out of memory */
} dfsv_status;

/* What the METADATA reply says about the served policy (PROTOCOL.md, "METADATA"). */
typedef struct dfsv_metadata {
    uint32_t obs_dim;        /* floats per observation row (a Dict observation: its keys' values concatenated) */
    uint32_t act_dim;        /* floats per action row */
    uint32_t num_steps;      /* K: a noise row holds (K + 1) * act_dim floats */
    uint32_t max_batch;      /* the most rows one ACT may carry */
    int noise_input;         /* 0: the graph draws its own noise, so ACT takes neither noise nor deterministic */
    const char *json;        /* the whole reply, NUL-terminated; valid until the next dfsv_metadata_get or free */
} dfsv_metadata;

typedef struct dfsv_client dfsv_client;

/* A client for host:port (a name or an IPv4/IPv6 address). token: the server's --token, or NULL.
 * timeout_ms bounds each call (see the top of this file). Connects on the first request, not here.
 * Returns NULL only when out of memory or when host is NULL. */
dfsv_client *dfsv_client_new(const char *host, uint16_t port, const char *token, int timeout_ms);

/* Close the connection, if any, and free the client (NULL is allowed). */
void dfsv_client_free(dfsv_client *client);

/* Connect now, and send AUTH when the client has a token; a request does this by itself when needed. */
int dfsv_connect(dfsv_client *client);

/* Close the connection; the next request opens a new one. */
void dfsv_disconnect(dfsv_client *client);

/* A health check: PING, and its round-trip time in seconds (rtt_seconds may be NULL). */
int dfsv_ping(dfsv_client *client, double *rtt_seconds);

/* Ask for the policy's metadata (METADATA) and fill *metadata. */
int dfsv_metadata_get(dfsv_client *client, dfsv_metadata *metadata);

/* Actions for `rows` observations (ACT).
 *   obs            rows * obs_dim floats, row-major, raw (in the environment's units)
 *   noise          NULL: the server draws the chain's noise, or uses zeros when `deterministic`;
 *                  else noise_len = rows * (K + 1) * act_dim standard normal floats, laid out
 *                  [row][K + 1][act_dim] (deterministic must then be 0)
 *   actions        receives rows * act_dim floats; actions_len is how many it can hold
 * A policy whose graph draws its own noise (metadata.noise_input == 0) takes neither noise nor
 * deterministic. */
int dfsv_act(dfsv_client *client, const float *obs, uint32_t rows, uint32_t obs_dim, const float *noise,
             size_t noise_len, int deterministic, float *actions, size_t actions_len);

/* What the last failed call of this client went wrong with and what to do, as one line ("" after a
 * success). Valid until the next call on the client. */
const char *dfsv_last_error(const dfsv_client *client);

/* The status's name: "BAD_SHAPE", "E_TIMEOUT", ...; "UNKNOWN_ERROR" for a server code this library
 * does not know (a newer server's). */
const char *dfsv_status_name(int status);

/* Whether the client closed its connection on this status, so that the request was not answered and
 * may be sent again (the next call reconnects). Per-request errors (BAD_SHAPE, NON_FINITE, ...) leave
 * the connection open: fix the request instead. */
int dfsv_status_ends_connection(int status);

#ifdef __cplusplus
}
#endif

#endif /* DIFFAGENT_CLIENT_H */

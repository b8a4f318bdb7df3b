/* The C client for `diffagent serve`; the API and its promises are in diffagent_client.h, the wire format
 * in serve/PROTOCOL.md.
 *
 * Every integer and float goes on the wire through put_u32/get_u32, which write little-endian bytes
 * whatever the host's order, so the same code is right on a big-endian controller. A frame is built
 * whole in one buffer and sent with one send(): the protocol asks for it, and with TCP_NODELAY a
 * split request would cost a second packet. The socket is non-blocking, and every wait is a poll()
 * bounded by the call's deadline, so no call can hang past timeout_ms.
 */
#define _POSIX_C_SOURCE 200809L

#include "diffagent_client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL /* a peer that hung up must not kill the controller with SIGPIPE */
#else
#define SEND_FLAGS 0 /* macOS: SO_NOSIGPIPE is set on the socket instead */
#endif

enum {
    HEADER_SIZE = 24,
    TYPE_ACT = 0x01, TYPE_PING = 0x02, TYPE_METADATA = 0x03, TYPE_AUTH = 0x04, TYPE_ERROR = 0xFF,
    REPLY_BIT = 0x80,
    DTYPE_NONE = 0, DTYPE_FLOAT32 = 1,
    FLAG_DETERMINISTIC = 0x01, FLAG_NOISE = 0x02,
    ERROR_CODE_SIZE = 4,
    ERROR_TEXT_SIZE = 1280 /* the server's message (at most 1024 bytes) and this library's words around it */
};

struct dfsv_client {
    char *host;
    char port_text[8];
    char *token;
    int timeout_ms;
    int fd;                  /* -1: not connected */
    uint32_t next_id;        /* 1, 2, ..., 2^32 - 1, then 1: id 0 marks the server's unsolicited errors */
    unsigned char *frame;    /* the frame being sent, then the reply's payload */
    size_t frame_capacity;
    char *metadata_json;
    char error[ERROR_TEXT_SIZE];
};

typedef struct {
    uint8_t type, dtype, flags;
    uint32_t request_id, rows, cols, payload_len;
} header;

/* --- little-endian fields ----------------------------------------------------------------------- */
static void put_u32(unsigned char *out, uint32_t value) {
    out[0] = (unsigned char)value;
    out[1] = (unsigned char)(value >> 8);
    out[2] = (unsigned char)(value >> 16);
    out[3] = (unsigned char)(value >> 24);
}

static uint32_t get_u32(const unsigned char *in) {
    return (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 | (uint32_t)in[3] << 24;
}

static void put_floats(unsigned char *out, const float *values, size_t count) {
    for (size_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], sizeof bits);
        put_u32(out + 4 * i, bits);
    }
}

static void get_floats(float *values, const unsigned char *in, size_t count) {
    for (size_t i = 0; i < count; i++) {
        uint32_t bits = get_u32(in + 4 * i);
        memcpy(&values[i], &bits, sizeof bits);
    }
}

/* --- status and error text ---------------------------------------------------------------------- */
const char *dfsv_status_name(int status) {
    static const char *const server_names[] = {
        "OK", "BAD_MAGIC", "UNSUPPORTED_VERSION", "FRAME_TOO_LARGE", "UNKNOWN_TYPE", "BAD_DTYPE", "BAD_SHAPE",
        "NON_FINITE", "BAD_FLAGS", "UNAUTHORIZED", "BUSY", "INTERNAL", "TIMED_OUT"};
    static const char *const own_names[] = {"E_CONNECT", "E_TIMEOUT", "E_CLOSED", "E_PROTOCOL", "E_ARGUMENT",
                                            "E_NOMEM"};
    if (status >= 0 && status < (int)(sizeof server_names / sizeof *server_names)) return server_names[status];
    if (status < 0 && -status <= (int)(sizeof own_names / sizeof *own_names)) return own_names[-status - 1];
    return "UNKNOWN_ERROR";
}

int dfsv_status_ends_connection(int status) {
    switch (status) {
    case DFSV_OK: case DFSV_UNKNOWN_TYPE: case DFSV_BAD_DTYPE: case DFSV_BAD_SHAPE: case DFSV_NON_FINITE:
    case DFSV_BAD_FLAGS: case DFSV_INTERNAL: case DFSV_E_ARGUMENT: case DFSV_E_NOMEM:
        return 0;
    default: /* the fatal server codes, a code newer than this library, and the transport's failures */
        return 1;
    }
}

static int fail(dfsv_client *client, int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(client->error, sizeof client->error, format, args);
    va_end(args);
    if (dfsv_status_ends_connection(status)) dfsv_disconnect(client);
    return status;
}

/* --- time ---------------------------------------------------------------------------------------- */
static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double deadline_after(const dfsv_client *client) {
    return client->timeout_ms > 0 ? now_seconds() + client->timeout_ms / 1000.0 : -1.0;
}

/* Wait until fd is ready for `events` or the deadline (-1: none) passes; 1 ready, 0 timed out, -1 error. */
static int wait_for(int fd, short events, double deadline) {
    for (;;) {
        int wait_ms = -1;
        if (deadline >= 0) {
            double left = deadline - now_seconds();
            if (left <= 0) return 0;
            wait_ms = (int)(left * 1000.0) + 1;
        }
        struct pollfd entry = {fd, events, 0};
        int ready = poll(&entry, 1, wait_ms);
        if (ready > 0) return 1;
        if (ready < 0 && errno != EINTR) return -1;
        if (ready == 0 && deadline >= 0 && now_seconds() >= deadline) return 0;
    }
}

/* --- frames -------------------------------------------------------------------------------------- */
static int reserve(dfsv_client *client, size_t size) {
    if (size <= client->frame_capacity) return DFSV_OK;
    unsigned char *grown = (unsigned char *)realloc(client->frame, size);
    if (grown == NULL) {
        return fail(client, DFSV_E_NOMEM, "out of memory for a frame of %zu bytes; send a smaller batch", size);
    }
    client->frame = grown;
    client->frame_capacity = size;
    return DFSV_OK;
}

static int transport_failed(dfsv_client *client, int status, const char *what) {
    if (status == DFSV_E_TIMEOUT) {
        return fail(client, DFSV_E_TIMEOUT, "no reply from %s:%s within %d ms; the connection was dropped, and "
                    "the next call reconnects (raise timeout_ms if the server is slow)", client->host,
                    client->port_text, client->timeout_ms);
    }
    return fail(client, DFSV_E_CLOSED, "lost the connection to %s:%s while %s (%s); the server closed it or "
                "restarted. The next call reconnects, and the request may be sent again", client->host,
                client->port_text, what, errno != 0 ? strerror(errno) : "end of stream");
}

static int send_all(dfsv_client *client, const unsigned char *data, size_t size, double deadline) {
    while (size > 0) {
        ssize_t sent = send(client->fd, data, size, SEND_FLAGS);
        if (sent > 0) {
            data += sent;
            size -= (size_t)sent;
            continue;
        }
        if (sent < 0 && errno == EINTR) continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ready = wait_for(client->fd, POLLOUT, deadline);
            if (ready > 0) continue;
            return transport_failed(client, ready == 0 ? DFSV_E_TIMEOUT : DFSV_E_CLOSED, "sending");
        }
        return transport_failed(client, DFSV_E_CLOSED, "sending");
    }
    return DFSV_OK;
}

static int receive_all(dfsv_client *client, unsigned char *data, size_t size, double deadline) {
    while (size > 0) {
        ssize_t got = recv(client->fd, data, size, 0);
        if (got > 0) {
            data += got;
            size -= (size_t)got;
            continue;
        }
        if (got == 0) {
            errno = 0;
            return transport_failed(client, DFSV_E_CLOSED, "reading the reply");
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int ready = wait_for(client->fd, POLLIN, deadline);
            if (ready > 0) continue;
            return transport_failed(client, ready == 0 ? DFSV_E_TIMEOUT : DFSV_E_CLOSED, "reading the reply");
        }
        return transport_failed(client, DFSV_E_CLOSED, "reading the reply");
    }
    return DFSV_OK;
}

static int server_error(dfsv_client *client, const unsigned char *payload, uint32_t length) {
    if (length < ERROR_CODE_SIZE) {
        return fail(client, DFSV_E_PROTOCOL, "the server sent an ERROR frame without a code; the connection was "
                    "dropped. Check that the server speaks serve/PROTOCOL.md version %d", DFSV_PROTOCOL_VERSION);
    }
    uint32_t code = get_u32(payload);
    int status = code >= 1 && code <= 0x7FFFFFFFu ? (int)code : DFSV_E_PROTOCOL;
    const char *after = !dfsv_status_ends_connection(status) ? "the connection stays open"
                        : status == DFSV_UNAUTHORIZED       ? "check the token; the connection was closed"
                        : status == DFSV_BUSY                ? "back off, then try again: the next call reconnects"
                                                             : "the next call reconnects";
    return fail(client, status, "server error %s (%u): %.*s [%s]", dfsv_status_name(status), (unsigned)code,
                (int)(length - ERROR_CODE_SIZE), (const char *)payload + ERROR_CODE_SIZE, after);
}

/* Send the frame whose payload is already in client->frame after the header room, and read its reply:
 * the header into *reply (may be NULL), the payload into client->frame. A reply of another type than
 * the request's, or for another request, is a protocol error. */
static int exchange(dfsv_client *client, uint8_t type, uint8_t dtype, uint8_t flags, uint32_t rows,
                    uint32_t cols, uint32_t payload_len, double deadline, header *reply) {
    uint32_t request_id = client->next_id;
    client->next_id = request_id == UINT32_MAX ? 1 : request_id + 1;
    unsigned char *out = client->frame;
    memcpy(out, "DFSV", 4);
    out[4] = DFSV_PROTOCOL_VERSION;
    out[5] = type;
    out[6] = dtype;
    out[7] = flags;
    put_u32(out + 8, request_id);
    put_u32(out + 12, rows);
    put_u32(out + 16, cols);
    put_u32(out + 20, payload_len);
    int status = send_all(client, out, HEADER_SIZE + (size_t)payload_len, deadline);
    if (status != DFSV_OK) return status;

    unsigned char in[HEADER_SIZE];
    status = receive_all(client, in, HEADER_SIZE, deadline);
    if (status != DFSV_OK) return status;
    header got = {in[5], in[6], in[7], get_u32(in + 8), get_u32(in + 12), get_u32(in + 16), get_u32(in + 20)};
    if (memcmp(in, "DFSV", 4) != 0 || in[4] != DFSV_PROTOCOL_VERSION) {
        return fail(client, DFSV_E_PROTOCOL, "%s:%s did not answer with a version-%d diffagent frame; the "
                    "connection was dropped. Is it `diffagent serve`, and of a version that speaks protocol %d?",
                    client->host, client->port_text, DFSV_PROTOCOL_VERSION, DFSV_PROTOCOL_VERSION);
    }
    if (got.payload_len > DFSV_MAX_PAYLOAD) {
        return fail(client, DFSV_E_PROTOCOL, "the server announced a reply of %u bytes, above the %u this client "
                    "accepts; the connection was dropped. Send smaller batches", (unsigned)got.payload_len,
                    (unsigned)DFSV_MAX_PAYLOAD);
    }
    status = reserve(client, got.payload_len);
    if (status != DFSV_OK) {
        dfsv_disconnect(client); /* the unread payload leaves the stream out of step */
        return status;
    }
    status = receive_all(client, client->frame, got.payload_len, deadline);
    if (status != DFSV_OK) return status;
    if (got.type == TYPE_ERROR) return server_error(client, client->frame, got.payload_len);
    if (got.type != (type | REPLY_BIT) || got.request_id != request_id) {
        return fail(client, DFSV_E_PROTOCOL, "unexpected reply (type 0x%02x, id %u) to request %u of type 0x%02x; "
                    "the connection was dropped and the next call reconnects", got.type, (unsigned)got.request_id,
                    (unsigned)request_id, type);
    }
    if (reply != NULL) *reply = got;
    client->error[0] = '\0';
    return DFSV_OK;
}

/* --- the connection ------------------------------------------------------------------------------ */
dfsv_client *dfsv_client_new(const char *host, uint16_t port, const char *token, int timeout_ms) {
    if (host == NULL) return NULL;
    dfsv_client *client = (dfsv_client *)calloc(1, sizeof *client);
    if (client == NULL) return NULL;
    client->host = strdup(host);
    client->token = token != NULL ? strdup(token) : NULL;
    if (client->host == NULL || (token != NULL && client->token == NULL)) {
        dfsv_client_free(client);
        return NULL;
    }
    snprintf(client->port_text, sizeof client->port_text, "%u", (unsigned)port);
    client->timeout_ms = timeout_ms;
    client->fd = -1;
    client->next_id = 1;
    return client;
}

void dfsv_client_free(dfsv_client *client) {
    if (client == NULL) return;
    dfsv_disconnect(client);
    free(client->host);
    free(client->token);
    free(client->frame);
    free(client->metadata_json);
    free(client);
}

void dfsv_disconnect(dfsv_client *client) {
    if (client != NULL && client->fd >= 0) {
        close(client->fd);
        client->fd = -1;
    }
}

const char *dfsv_last_error(const dfsv_client *client) {
    return client != NULL ? client->error : "no client (dfsv_client_new returned NULL: out of memory or no host)";
}

static int connect_failed(dfsv_client *client, const char *why) {
    return fail(client, DFSV_E_CONNECT, "cannot connect to a policy server at %s:%s (%s); start one with "
                "`diffagent serve MODEL --port %s`, or check the host and port", client->host, client->port_text,
                why, client->port_text);
}

/* A non-blocking TCP connection to one resolved address, within the deadline; the socket, or -1 with errno. */
static int open_socket(const struct addrinfo *address, double deadline) {
    int fd = socket(address->ai_family, address->ai_socktype, address->ai_protocol);
    if (fd < 0) return -1;
    int one = 1;
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) goto failed;
#ifdef SO_NOSIGPIPE
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    if (connect(fd, address->ai_addr, address->ai_addrlen) < 0) {
        if (errno != EINPROGRESS) goto failed;
        int ready = wait_for(fd, POLLOUT, deadline);
        if (ready <= 0) {
            if (ready == 0) errno = ETIMEDOUT;
            goto failed;
        }
        int error = 0;
        socklen_t size = sizeof error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) < 0) goto failed;
        if (error != 0) {
            errno = error;
            goto failed;
        }
    }
    /* Each request is one small write: Nagle's algorithm would hold it back for up to 40 ms. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
failed:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

static int connect_within(dfsv_client *client, double deadline) {
    struct addrinfo hints, *addresses;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int resolved = getaddrinfo(client->host, client->port_text, &hints, &addresses);
    if (resolved != 0) return connect_failed(client, gai_strerror(resolved));
    int fd = -1;
    for (const struct addrinfo *address = addresses; address != NULL && fd < 0; address = address->ai_next) {
        fd = open_socket(address, deadline);
    }
    int saved = errno;
    freeaddrinfo(addresses);
    if (fd < 0) return connect_failed(client, strerror(saved));
    client->fd = fd;
    if (client->token != NULL) {
        /* AUTH goes first, at once: the server closes a connection that has not authenticated within
         * its --auth-timeout (PROTOCOL.md, "AUTH"). */
        size_t length = strlen(client->token);
        if (length > DFSV_MAX_PAYLOAD) return fail(client, DFSV_E_ARGUMENT, "the token is longer than a frame");
        int status = reserve(client, HEADER_SIZE + length);
        if (status != DFSV_OK) return status;
        memcpy(client->frame + HEADER_SIZE, client->token, length);
        status = exchange(client, TYPE_AUTH, DTYPE_NONE, 0, 0, 0, (uint32_t)length, deadline, NULL);
        if (status != DFSV_OK) return status;
    }
    client->error[0] = '\0';
    return DFSV_OK;
}

/* Whether bytes, or the end of the stream, wait on the socket before a request goes out. Every reply
 * is read before the next request, so they can only be the server's goodbye: an ERROR with request
 * id 0 (its idle timeout, a displaced slot) and the close, or a restart's reset. */
static int server_said_goodbye(int fd) {
    struct pollfd entry = {fd, POLLIN, 0};
    return poll(&entry, 1, 0) > 0;
}

static int ensure_connected(dfsv_client *client, double deadline) {
    if (client->fd >= 0 && server_said_goodbye(client->fd)) dfsv_disconnect(client);
    return client->fd >= 0 ? DFSV_OK : connect_within(client, deadline);
}

int dfsv_connect(dfsv_client *client) {
    if (client == NULL) return DFSV_E_ARGUMENT;
    int status = ensure_connected(client, deadline_after(client));
    if (status == DFSV_OK) client->error[0] = '\0';
    return status;
}

/* Connect if needed, then make room for a request of payload_len bytes after the header. */
static int begin_request(dfsv_client *client, size_t payload_len, double deadline) {
    if (payload_len > DFSV_MAX_PAYLOAD) {
        return fail(client, DFSV_E_ARGUMENT, "a request of %zu bytes exceeds the server's default limit of %u "
                    "(FRAME_TOO_LARGE); split the batch", payload_len, (unsigned)DFSV_MAX_PAYLOAD);
    }
    int status = ensure_connected(client, deadline);
    return status != DFSV_OK ? status : reserve(client, HEADER_SIZE + payload_len);
}

/* --- requests ------------------------------------------------------------------------------------ */
int dfsv_ping(dfsv_client *client, double *rtt_seconds) {
    if (client == NULL) return DFSV_E_ARGUMENT;
    double start = now_seconds(), deadline = deadline_after(client);
    int status = begin_request(client, 0, deadline);
    if (status == DFSV_OK) status = exchange(client, TYPE_PING, DTYPE_NONE, 0, 0, 0, 0, deadline, NULL);
    if (status == DFSV_OK && rtt_seconds != NULL) *rtt_seconds = now_seconds() - start;
    return status;
}

/* Where the value of a top-level key of a JSON object starts, found by scanning the text with its strings
 * and nesting in view, so that a key of a nested object or a string holding the key's name is never
 * taken for it; NULL when the object has no such key. */
static const char *json_top_level_value(const char *json, const char *key) {
    size_t key_length = strlen(key);
    int depth = 0;
    for (const char *at = json; *at != '\0'; at++) {
        if (*at == '{' || *at == '[') {
            depth++;
        } else if (*at == '}' || *at == ']') {
            depth--;
        } else if (*at == '"') {
            const char *start = at + 1, *end = start;
            while (*end != '\0' && *end != '"') end += (*end == '\\' && end[1] != '\0') ? 2 : 1;
            if (*end == '\0') return NULL;
            const char *after = end + 1;
            while (*after == ' ' || *after == '\n' || *after == '\t' || *after == '\r') after++;
            if (depth == 1 && *after == ':' && (size_t)(end - start) == key_length &&
                memcmp(start, key, key_length) == 0) {
                after++;
                while (*after == ' ' || *after == '\n' || *after == '\t' || *after == '\r') after++;
                return after;
            }
            at = end;
        }
    }
    return NULL;
}

int dfsv_metadata_get(dfsv_client *client, dfsv_metadata *metadata) {
    if (client == NULL) return DFSV_E_ARGUMENT;
    if (metadata == NULL) return fail(client, DFSV_E_ARGUMENT, "dfsv_metadata_get needs a dfsv_metadata to fill");
    double deadline = deadline_after(client);
    header reply;
    int status = begin_request(client, 0, deadline);
    if (status == DFSV_OK) status = exchange(client, TYPE_METADATA, DTYPE_NONE, 0, 0, 0, 0, deadline, &reply);
    if (status != DFSV_OK) return status;
    char *json = (char *)malloc((size_t)reply.payload_len + 1);
    if (json == NULL) return fail(client, DFSV_E_NOMEM, "out of memory for the metadata reply");
    memcpy(json, client->frame, reply.payload_len);
    json[reply.payload_len] = '\0';
    free(client->metadata_json);
    client->metadata_json = json;

    static const char *const keys[] = {"obs_dim", "act_dim", "num_steps", "max_batch"};
    uint32_t *fields[] = {&metadata->obs_dim, &metadata->act_dim, &metadata->num_steps, &metadata->max_batch};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const char *value = json_top_level_value(json, keys[i]);
        char *number_end = NULL;
        unsigned long number = value != NULL ? strtoul(value, &number_end, 10) : 0;
        if (value == NULL || number_end == value || number > UINT32_MAX) {
            return fail(client, DFSV_E_PROTOCOL, "the METADATA reply has no number '%s'; is the server a "
                        "`diffagent serve` of protocol version %d?", keys[i], DFSV_PROTOCOL_VERSION);
        }
        *fields[i] = (uint32_t)number;
    }
    const char *noise_input = json_top_level_value(json, "noise_input");
    metadata->noise_input = noise_input == NULL || strncmp(noise_input, "false", 5) != 0;
    metadata->json = json;
    return DFSV_OK;
}

int dfsv_act(dfsv_client *client, const float *obs, uint32_t rows, uint32_t obs_dim, const float *noise,
             size_t noise_len, int deterministic, float *actions, size_t actions_len) {
    if (client == NULL) return DFSV_E_ARGUMENT;
    if (obs == NULL || actions == NULL || rows == 0 || obs_dim == 0) {
        return fail(client, DFSV_E_ARGUMENT, "dfsv_act needs obs and actions buffers and rows, obs_dim >= 1 (got "
                    "rows=%u, obs_dim=%u)", (unsigned)rows, (unsigned)obs_dim);
    }
    if (noise != NULL && deterministic) {
        return fail(client, DFSV_E_ARGUMENT, "dfsv_act takes noise or deterministic, not both: zero noise is the "
                    "deterministic action");
    }
    size_t obs_len = (size_t)rows * obs_dim, sent_noise = noise != NULL ? noise_len : 0;
    size_t payload_len = 4 * (obs_len + sent_noise);
    double deadline = deadline_after(client);
    int status = begin_request(client, payload_len, deadline);
    if (status != DFSV_OK) return status;
    put_floats(client->frame + HEADER_SIZE, obs, obs_len);
    put_floats(client->frame + HEADER_SIZE + 4 * obs_len, noise, sent_noise);
    uint8_t flags = noise != NULL ? FLAG_NOISE : deterministic ? FLAG_DETERMINISTIC : 0;
    header reply;
    status = exchange(client, TYPE_ACT, DTYPE_FLOAT32, flags, rows, obs_dim, (uint32_t)payload_len, deadline,
                      &reply);
    if (status != DFSV_OK) return status;
    size_t action_count = (size_t)reply.rows * reply.cols;
    if (reply.dtype != DTYPE_FLOAT32 || reply.rows != rows || reply.payload_len != 4 * action_count) {
        return fail(client, DFSV_E_PROTOCOL, "malformed ACT reply (rows=%u, cols=%u, %u bytes) to %u observations; "
                    "the connection was dropped", (unsigned)reply.rows, (unsigned)reply.cols,
                    (unsigned)reply.payload_len, (unsigned)rows);
    }
    if (action_count > actions_len) {
        return fail(client, DFSV_E_ARGUMENT, "actions holds %zu floats, but the reply has rows * act_dim = %u * %u; "
                    "size it from dfsv_metadata_get's act_dim", actions_len, (unsigned)rows, (unsigned)reply.cols);
    }
    get_floats(actions, client->frame, action_count);
    return DFSV_OK;
}

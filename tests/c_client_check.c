/* The C client driven by tests/test_c_client.py: each COMMAND makes one call and prints one line.
 *
 *   c_client_check [--token TOKEN] [--timeout-ms N] HOST PORT COMMAND...
 *
 *   metadata                                          metadata obs_dim=3 act_dim=2 num_steps=2 max_batch=1024 noise_input=1
 *   ping                                              ping ok
 *   act ROWS OBS_DIM ACT_DIM OBS NOISE|- DET OUT      act ok        (OBS, NOISE, OUT: raw float32 files)
 *   sleep MS                                          sleep ok
 *
 * A failed call prints `COMMAND error STATUS NAME ENDS_CONNECTION: MESSAGE` and the next command runs on,
 * so one run shows whether the connection survived the error.
 */
#define _POSIX_C_SOURCE 200809L

#include "diffagent_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static float *read_floats(const char *path, size_t *count) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) return NULL;
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    float *values = malloc(size > 0 ? (size_t)size : 1);
    *count = size > 0 ? (size_t)size / sizeof(float) : 0;
    if (values != NULL && fread(values, sizeof(float), *count, file) != *count) {
        free(values);
        values = NULL;
    }
    fclose(file);
    return values;
}

static int act(dfsv_client *client, char **args) {
    uint32_t rows = (uint32_t)strtoul(args[0], NULL, 10), obs_dim = (uint32_t)strtoul(args[1], NULL, 10);
    size_t act_dim = strtoul(args[2], NULL, 10), obs_count = 0, noise_count = 0;
    float *obs = read_floats(args[3], &obs_count);
    float *noise = strcmp(args[4], "-") != 0 ? read_floats(args[4], &noise_count) : NULL;
    float *actions = calloc(rows * act_dim, sizeof *actions);
    if (obs == NULL || actions == NULL || (noise == NULL && strcmp(args[4], "-") != 0)) {
        fprintf(stderr, "cannot read %s or %s\n", args[3], args[4]);
        exit(2);
    }
    int status = dfsv_act(client, obs, rows, obs_dim, noise, noise_count, atoi(args[5]), actions, rows * act_dim);
    if (status == DFSV_OK) {
        FILE *out = fopen(args[6], "wb");
        if (out == NULL || fwrite(actions, sizeof *actions, rows * act_dim, out) != rows * act_dim) exit(2);
        fclose(out);
    }
    free(obs);
    free(noise);
    free(actions);
    return status;
}

int main(int argc, char **argv) {
    const char *token = NULL;
    int timeout_ms = 5000, at = 1;
    for (; at + 1 < argc && strncmp(argv[at], "--", 2) == 0; at += 2) {
        if (strcmp(argv[at], "--token") == 0) token = argv[at + 1];
        else if (strcmp(argv[at], "--timeout-ms") == 0) timeout_ms = atoi(argv[at + 1]);
    }
    if (argc - at < 2) {
        fprintf(stderr, "usage: %s [--token TOKEN] [--timeout-ms N] HOST PORT COMMAND...\n", argv[0]);
        return 2;
    }
    dfsv_client *client = dfsv_client_new(argv[at], (uint16_t)atoi(argv[at + 1]), token, timeout_ms);
    if (client == NULL) return 2;
    for (at += 2; at < argc; at++) {
        const char *command = argv[at];
        int status;
        if (strcmp(command, "metadata") == 0) {
            dfsv_metadata meta;
            status = dfsv_metadata_get(client, &meta);
            if (status == DFSV_OK) {
                printf("metadata obs_dim=%u act_dim=%u num_steps=%u max_batch=%u noise_input=%d\n",
                       (unsigned)meta.obs_dim, (unsigned)meta.act_dim, (unsigned)meta.num_steps,
                       (unsigned)meta.max_batch, meta.noise_input);
            }
        } else if (strcmp(command, "ping") == 0) {
            double round_trip = 0;
            status = dfsv_ping(client, &round_trip);
            if (status == DFSV_OK) printf("ping ok\n");
        } else if (strcmp(command, "act") == 0 && at + 7 < argc) {
            status = act(client, argv + at + 1);
            at += 7;
            if (status == DFSV_OK) printf("act ok\n");
        } else if (strcmp(command, "sleep") == 0 && at + 1 < argc) {
            long ms = atol(argv[++at]);
            struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
            nanosleep(&pause, NULL);
            status = DFSV_OK;
            printf("sleep ok\n");
        } else {
            fprintf(stderr, "unknown command or missing arguments: %s\n", command);
            return 2;
        }
        if (status != DFSV_OK) {
            printf("%s error %d %s %d: %s\n", command, status, dfsv_status_name(status),
                   dfsv_status_ends_connection(status), dfsv_last_error(client));
        }
        fflush(stdout);
    }
    dfsv_client_free(client);
    return 0;
}

/* The robot path with no server: an exported policy.onnx run in-process through onnxruntime's C API.
 *
 *     example_onnx_inprocess MODEL.onnx OBS.f32 ACTIONS.f32 [--deterministic | --noise NOISE.f32 | --seed N]
 *
 * reads float32 observations (rows of obs_dim, native byte order) from OBS.f32 and writes the actions
 * (rows of act_dim, in the environment's units) to ACTIONS.f32: with zero chain noise (--deterministic),
 * the noise given ([row][K + 1][act_dim] standard normal floats), or noise drawn here from a seeded
 * generator (--seed, the default 0). The policy_* functions are the part to copy into a controller:
 * policy_open once, then one policy_act per tick.
 *
 * Build and run (onnxruntime's C API from `bash serve/c/get_onnxruntime.sh`, or your own install):
 *     gcc -std=c99 -O2 -I serve/c/build/onnxruntime/include -o serve/c/build/example_onnx_inprocess \
 *         serve/c/example_onnx_inprocess.c -L serve/c/build/onnxruntime/lib -lonnxruntime \
 *         -Wl,-rpath,"$PWD/serve/c/build/onnxruntime/lib" -lm
 *
 * The graph's inputs and metadata are serve/contract.py's ONNX contract: obs [B, obs_dim], noise
 * [B, K + 1, act_dim] (absent from a graph that draws its own noise), action [B, act_dim]; obs_dim,
 * act_dim, num_steps and noise_input are in the model's metadata.
 */
#define _POSIX_C_SOURCE 200809L

#include <onnxruntime_c_api.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const OrtApi *ort;
    OrtEnv *env;
    OrtSession *session;
    OrtMemoryInfo *memory;
    uint32_t obs_dim, act_dim, num_steps;
    int noise_input; /* 0: the graph draws its own noise and has no noise input */
    char error[512];
} policy;

/* Keep onnxruntime's message in p->error and free its status; 0 when there was no error. */
static int failed(policy *p, OrtStatus *status, const char *doing) {
    if (status == NULL) return 0;
    snprintf(p->error, sizeof p->error, "%s: %s", doing, p->ort->GetErrorMessage(status));
    p->ort->ReleaseStatus(status);
    return 1;
}

/* A metadata_props value of the model, copied into `value`; the exporter writes obs_dim, act_dim, num_steps
 * and noise_input among them (serve/contract.py). */
static int metadata_text(policy *p, OrtModelMetadata *metadata, const char *key, char *value, size_t size) {
    OrtAllocator *allocator;
    char *text = NULL;
    if (failed(p, p->ort->GetAllocatorWithDefaultOptions(&allocator), "getting an allocator") ||
        failed(p, p->ort->ModelMetadataLookupCustomMetadataMap(metadata, allocator, key, &text), "reading metadata")) {
        return 1;
    }
    if (text == NULL) {
        snprintf(p->error, sizeof p->error, "the model's metadata has no '%s': is it a diffagent policy? Export it "
                 "with `diffagent export MODEL_DIR`", key);
        return 1;
    }
    snprintf(value, size, "%s", text);
    return failed(p, p->ort->AllocatorFree(allocator, text), "freeing a metadata value");
}

static int read_metadata(policy *p, OrtModelMetadata *metadata) {
    static const char *const keys[] = {"obs_dim", "act_dim", "num_steps"};
    uint32_t *fields[] = {&p->obs_dim, &p->act_dim, &p->num_steps};
    char text[32];
    for (size_t i = 0; i < 3; i++) {
        if (metadata_text(p, metadata, keys[i], text, sizeof text) != 0) return 1;
        *fields[i] = (uint32_t)strtoul(text, NULL, 10);
    }
    if (metadata_text(p, metadata, "noise_input", text, sizeof text) != 0) return 1;
    p->noise_input = strcmp(text, "false") != 0;
    return 0;
}

static void policy_close(policy *p) {
    if (p->ort == NULL) return;
    if (p->memory != NULL) p->ort->ReleaseMemoryInfo(p->memory);
    if (p->session != NULL) p->ort->ReleaseSession(p->session);
    if (p->env != NULL) p->ort->ReleaseEnv(p->env);
}

static int policy_open(policy *p, const char *model_path) {
    memset(p, 0, sizeof *p);
    p->ort = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (p->ort == NULL) {
        snprintf(p->error, sizeof p->error, "the onnxruntime library (%s) is older than these headers (API version "
                 "%d); link a newer one", OrtGetApiBase()->GetVersionString(), ORT_API_VERSION);
        return 1;
    }
    OrtSessionOptions *options;
    OrtModelMetadata *metadata;
    if (failed(p, p->ort->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "diffagent", &p->env), "creating the environment") ||
        failed(p, p->ort->CreateSessionOptions(&options), "creating session options")) {
        return 1;
    }
    /* One intra-op thread: the chain is small, and at batch 1 threads only add hand-off latency. */
    int error = failed(p, p->ort->SetIntraOpNumThreads(options, 1), "setting threads") ||
                failed(p, p->ort->CreateSession(p->env, model_path, options, &p->session), model_path);
    p->ort->ReleaseSessionOptions(options);
    if (error || failed(p, p->ort->SessionGetModelMetadata(p->session, &metadata), "reading the model's metadata")) {
        return 1;
    }
    error = read_metadata(p, metadata);
    p->ort->ReleaseModelMetadata(metadata);
    if (error) return 1;
    return failed(p, p->ort->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &p->memory), "memory info");
}

/* Actions for `rows` observations; noise holds rows * (K + 1) * act_dim floats (ignored, and may be NULL,
 * for a graph that draws its own). onnxruntime reads the caller's buffers in place. */
static int policy_act(policy *p, const float *obs, uint32_t rows, const float *noise, float *actions) {
    const int64_t obs_shape[2] = {rows, p->obs_dim}, noise_shape[3] = {rows, p->num_steps + 1, p->act_dim};
    size_t noise_floats = (size_t)rows * (p->num_steps + 1) * p->act_dim;
    const char *input_names[2] = {"obs", "noise"}, *output_names[1] = {"action"};
    OrtValue *inputs[2] = {NULL, NULL}, *output = NULL;
    size_t input_count = p->noise_input ? 2 : 1;
    int error =
        failed(p, p->ort->CreateTensorWithDataAsOrtValue(p->memory, (void *)obs, sizeof(float) * rows * p->obs_dim,
                                                         obs_shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &inputs[0]),
               "wrapping obs") ||
        (p->noise_input &&
         failed(p, p->ort->CreateTensorWithDataAsOrtValue(p->memory, (void *)noise, sizeof(float) * noise_floats,
                                                          noise_shape, 3, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                          &inputs[1]),
                "wrapping noise")) ||
        failed(p, p->ort->Run(p->session, NULL, input_names, (const OrtValue *const *)inputs, input_count,
                              output_names, 1, &output),
               "running the policy");
    float *data = NULL;
    if (!error) error = failed(p, p->ort->GetTensorMutableData(output, (void **)&data), "reading the action");
    if (!error) memcpy(actions, data, sizeof(float) * rows * p->act_dim);
    for (size_t i = 0; i < 2; i++) {
        if (inputs[i] != NULL) p->ort->ReleaseValue(inputs[i]);
    }
    if (output != NULL) p->ort->ReleaseValue(output);
    return error;
}

/* Standard normal draws: xorshift64* for the bits, Box-Muller for the shape. */
static double uniform(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return ((double)((*state * 2685821657736338717ULL) >> 11) + 0.5) / 9007199254740992.0; /* in (0, 1) */
}

static void draw_noise(float *noise, size_t count, uint64_t *state) {
    for (size_t i = 0; i < count; i++) {
        noise[i] = (float)(sqrt(-2.0 * log(uniform(state))) * cos(6.283185307179586 * uniform(state)));
    }
}

static float *read_floats(const char *path, size_t *count) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) return NULL;
    size_t capacity = 1024, used = 0, got;
    float *values = malloc(capacity * sizeof *values);
    while (values != NULL && (got = fread(values + used, sizeof *values, capacity - used, file)) > 0) {
        used += got;
        if (used == capacity) {
            float *grown = realloc(values, 2 * capacity * sizeof *values);
            if (grown == NULL) free(values);
            values = grown;
            capacity *= 2;
        }
    }
    fclose(file);
    *count = used;
    return values;
}

int main(int argc, char **argv) {
    const char *usage = "usage: %s MODEL.onnx OBS.f32 ACTIONS.f32 [--deterministic | --noise NOISE.f32 | --seed N]\n";
    int deterministic = argc == 5 && strcmp(argv[4], "--deterministic") == 0;
    const char *noise_path = argc == 6 && strcmp(argv[4], "--noise") == 0 ? argv[5] : NULL;
    int seeded = argc == 6 && strcmp(argv[4], "--seed") == 0;
    if (!(argc == 4 || deterministic || noise_path != NULL || seeded)) {
        fprintf(stderr, usage, argv[0]);
        return 2;
    }
    policy p;
    if (policy_open(&p, argv[1]) != 0) {
        fprintf(stderr, "error: %s\n", p.error);
        policy_close(&p);
        return 1;
    }
    size_t obs_count = 0, noise_count = 0;
    float *obs = read_floats(argv[2], &obs_count);
    if (obs == NULL || obs_count == 0 || obs_count % p.obs_dim != 0) {
        fprintf(stderr, "error: %s must hold rows of obs_dim = %u float32 values, it holds %zu\n", argv[2],
                (unsigned)p.obs_dim, obs_count);
        return 1;
    }
    uint32_t rows = (uint32_t)(obs_count / p.obs_dim);
    size_t noise_floats = (size_t)rows * (p.num_steps + 1) * p.act_dim;
    if ((deterministic || noise_path != NULL) && !p.noise_input) {
        fprintf(stderr, "error: this graph draws its own noise, so it takes neither --deterministic nor --noise; "
                        "export the (obs, noise) form to choose the noise\n");
        return 1;
    }
    float *noise = noise_path != NULL ? read_floats(noise_path, &noise_count) : calloc(noise_floats, sizeof(float));
    if (noise == NULL || (noise_path != NULL && noise_count != noise_floats)) {
        fprintf(stderr, "error: %s must hold rows * (K + 1) * act_dim = %zu float32 values, it holds %zu\n",
                noise_path != NULL ? noise_path : "the noise", noise_floats, noise_count);
        return 1;
    }
    if (noise_path == NULL && !deterministic) {
        uint64_t state = (seeded ? strtoull(argv[5], NULL, 10) : 0) * 0x9E3779B97F4A7C15ULL + 1; /* never 0 */
        draw_noise(noise, noise_floats, &state);
    }
    float *actions = malloc(sizeof(float) * rows * p.act_dim);
    FILE *out = actions != NULL && policy_act(&p, obs, rows, noise, actions) == 0 ? fopen(argv[3], "wb") : NULL;
    if (out == NULL || fwrite(actions, sizeof(float), (size_t)rows * p.act_dim, out) != (size_t)rows * p.act_dim) {
        fprintf(stderr, "error: %s\n", p.error[0] != '\0' ? p.error : "cannot write the actions file");
        return 1;
    }
    fclose(out);
    printf("%u observations -> %u actions of %u values (K = %u) in %s\n", (unsigned)rows, (unsigned)rows,
           (unsigned)p.act_dim, (unsigned)p.num_steps, argv[3]);
    free(obs);
    free(noise);
    free(actions);
    policy_close(&p);
    return 0;
}

"""README.md for app engineers: how to feed each file in the bundle, in the app's language.

The snippets name the runtimes' real APIs (ExecuTorch's org.pytorch.executorch Module/Tensor/
EValue on Android and its ExecuTorch Swift Module/Tensor on iOS, LiteRT's Interpreter, Core ML's
MLModel, onnxruntime's InferenceSession) and are filled with this bundle's shapes and numbers.
"""

from __future__ import annotations


def render(model_json: dict) -> str:
    inp = model_json["inputs"][0]
    shape = inp["shape"]
    pre = model_json["preprocessing"]
    lines = [
        f"# {model_json['model']}: on-device bundle",
        "",
        f"Input `{inp['name']}`: float32 {shape} ({inp['layout']}). Output `logits`: float32 "
        f"{model_json['outputs'][0]['shape']}, classes {', '.join(model_json['labels'][:12])}"
        + ("…" if len(model_json["labels"]) > 12 else "")
        + ".",
        "",
        "## Preprocessing (raw data to model input)",
        "",
        f"Raw data: {pre['raw']}.",
        (
            f"`x = ((raw * {pre['scale']:.8g}) - mean[c]) / std[c]`, mean = {list(pre['mean'])}, "
            f"std = {list(pre['std'])}, then HWC to CHW."
        ),
        "",
        (
            "`golden.npz` holds preprocessed inputs (`x`) and each file's outputs for them: run them "
            "in the app and compare, before anything else."
        ),
        "",
        "## Files",
        "",
        "| file | runtime | precision | parity on this host |",
        "|---|---|---|---|",
    ]
    for name, b in model_json["backends"].items():
        p = b["parity"]
        figures = ", ".join(f"{k} {v:.4g}" for k, v in p.items() if k != "state")
        lines.append(
            f"| `{b['file']}` | {name} | {b['precision']} | {p['state']}"
            + (f" ({figures})" if figures else "")
            + " |"
        )
    lines.append("")
    for name, b in model_json["backends"].items():
        snippet = _SNIPPETS.get(name)
        if snippet:
            lines += snippet(b, shape)
    return "\n".join(lines) + "\n"


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _long_array(shape) -> str:
    return ", ".join(f"{s}L" for s in shape)


def _executorch(b, shape):
    dims = ", ".join(str(s) for s in shape)
    return [
        f"## `{b['file']}`: ExecuTorch (XNNPACK delegate), {b['precision']}",
        "",
        "The program takes float32 input and returns float32 logits; int8 happens inside.",
        "",
        "Android (Kotlin, `org.pytorch.executorch:executorch-android`):",
        "",
        "```kotlin",
        "import org.pytorch.executorch.EValue",
        "import org.pytorch.executorch.Module",
        "import org.pytorch.executorch.Tensor",
        "",
        f'val module = Module.load("/data/local/tmp/{b["file"]}")',
        (
            f"val input = Tensor.fromBlob(pixels /* FloatArray({_numel(shape)}), preprocessed */, "
            f"longArrayOf({_long_array(shape)}))"
        ),
        "val logits = module.forward(EValue.from(input))[0].toTensor().dataAsFloatArray",
        "```",
        "",
        "iOS (Swift, the `executorch` and `backend_xnnpack` Swift packages):",
        "",
        "```swift",
        "import ExecuTorch",
        "",
        'let module = Module(filePath: Bundle.main.path(forResource: "model", ofType: "pte")!)',
        f"let input = Tensor<Float>(pixels /* [Float], preprocessed */, shape: [{dims}])",
        "let output: Tensor<Float> = try module.forward(input)[0].tensor()!",
        "let logits = output.scalars()",
        "```",
        "",
    ]


def _tflite(b, shape):
    io = b["io"]
    (i,), (o,) = io["inputs"], io["outputs"]
    lines = [f"## `{b['file']}`: LiteRT / TFLite, {b['precision']}", ""]
    if "quantization" in i:
        qi, qo = i["quantization"], o["quantization"]
        lines += [
            (
                f"Input and output tensors are int8. Quantize the preprocessed input: "
                f"`q = clamp(round(x / {qi['scale']:.8g}) + {qi['zero_point']}, -128, 127)`; "
                f"dequantize the output: `logit = (q - {qo['zero_point']}) * {qo['scale']:.8g}`."
            ),
            "",
        ]
    dtype = "Byte" if "quantization" in i else "Float"
    lines += [
        (
            f"Input layout {i.get('layout', 'NCHW')}, shape {i['shape']}; signature "
            f"`{io['signature']}`, input `{i['name']}`, output `{o['name']}`."
        ),
        "",
        "Android (Kotlin, `com.google.ai.edge.litert:litert`):",
        "",
        "```kotlin",
        "import org.tensorflow.lite.Interpreter",
        "import java.nio.ByteBuffer",
        "import java.nio.ByteOrder",
        "",
        'val interpreter = Interpreter(loadModelFile("model.tflite"))  // a MappedByteBuffer',
        f"val input = ByteBuffer.allocateDirect({_numel(i['shape'])}"
        + (" * 4" if dtype == "Float" else "")
        + ").order(ByteOrder.nativeOrder())",
        f"// fill `input` with the {'quantized int8' if dtype == 'Byte' else 'float32'} input",
        f"val output = ByteBuffer.allocateDirect({_numel(o['shape'])}"
        + (" * 4" if dtype == "Float" else "")
        + ").order(ByteOrder.nativeOrder())",
        "interpreter.run(input, output)",
        "```",
        "",
    ]
    return lines


def _coreml(b, shape):
    return [
        f"## `{b['file']}`: Core ML (mlprogram), {b['precision']}",
        "",
        "Add the .mlpackage to the Xcode project (Xcode compiles it), or compile at run time:",
        "",
        "```swift",
        "import CoreML",
        "",
        "let compiled = try MLModel.compileModel(at: packageURL)",
        "let model = try MLModel(contentsOf: compiled)",
        f"let x = try MLMultiArray(shape: {[int(s) for s in shape]}, dataType: .float32)",
        "// fill x with the preprocessed input",
        'let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: ["x": x]))',
        'let logits = out.featureValue(for: "logits")!.multiArrayValue!',
        "```",
        "",
        (
            "Core ML prediction runs only on Apple platforms: on Linux this file was checked "
            "structurally (spec, names, shapes, ops), not run."
        ),
        "",
    ]


def _onnx(b, shape):
    return [
        f"## `{b['file']}`: ONNX Runtime, {b['precision']}",
        "",
        "```kotlin",
        "import ai.onnxruntime.OnnxTensor",
        "import ai.onnxruntime.OrtEnvironment",
        "",
        "val env = OrtEnvironment.getEnvironment()",
        "val session = env.createSession(modelBytes, OrtSession.SessionOptions())",
        f"val x = OnnxTensor.createTensor(env, FloatBuffer.wrap(pixels), longArrayOf({_long_array(shape)}))",
        'val logits = session.run(mapOf("x" to x))[0].value as Array<FloatArray>',
        "```",
        "",
    ]


_SNIPPETS = {"executorch-xnnpack": _executorch, "tflite": _tflite, "coreml": _coreml, "onnx": _onnx}

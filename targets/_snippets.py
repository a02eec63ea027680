"""The README snippets of each backend: how an app feeds the file, in the app's language.

They name the runtimes' real APIs (ExecuTorch's org.pytorch.executorch Module/Tensor/EValue on
Android and its ExecuTorch Swift Module/Tensor on iOS, LiteRT's Interpreter, Core ML's MLModel,
onnxruntime's InferenceSession) and are filled with the bundle's shapes and numbers: `b` is
the backend's entry in model.json, `shape` the model input's.
"""

from __future__ import annotations


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _long_array(shape) -> str:
    return ", ".join(f"{s}L" for s in shape)


def executorch(b, shape):
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


def tflite(b, shape):
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


def coreml(b, shape):
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


def onnx(b, shape):
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

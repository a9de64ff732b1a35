import evaluate
from evaluate.utils import launch_gradio_widget


module = evaluate.load("mub_misleading_rate.py")
launch_gradio_widget(module)

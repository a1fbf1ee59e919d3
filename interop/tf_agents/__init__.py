"""TF-Agents interop: SORL SavedModel policies and gymnasium environments for its drivers.

Its trajectory files come in through data/tf_agents_source.py (`pipeline/preprocess.py
--input=tf_agents:PATH`), which needs TensorFlow only and so is a core data source, not part of
this optional layer.
- `policy`: `SavedModelPyPolicy` and `SavedModelTFPolicy`, tf_agents policies over one signature of
  an exported SORL SavedModel. Needs the optional layer (requirements-tf-agents.txt).
- `environment`: `GymnasiumPyEnvironment`, a tf_agents `PyEnvironment` over a gymnasium env (such
  as OGBench's); tf_agents' own wrappers accept only the old `gym` API. Needs the optional layer.
- `compat`: imports tf_agents with Keras 2 selected, and fixes its example encoder for NumPy 2.

The submodules are not imported here, so importing this package never imports tf_agents.
"""

"""TaskFlow decorators of the Modelbit provider, registered as ``@task.modelbit``."""

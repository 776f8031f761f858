# The AWS path in four targets. Needs the AWS CLI v2 and Docker; uses your default AWS profile and region
# unless AWS_PROFILE / AWS_REGION say otherwise.
#   make deploy                 create or update the stack (STACK=hydra-batch)
#   make push                   build the job image and push it to the stack's ECR repository
#   make outputs                show the stack's outputs (queue, job definition, bucket, ...)
#   make destroy                delete the stack (empty the bucket and repository first)
STACK ?= hydra-batch
BASE_IMAGE ?= python:3.11-slim
PARAMS ?=
TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo latest)

output = $(shell aws cloudformation describe-stacks --stack-name $(STACK) \
           --query "Stacks[0].Outputs[?OutputKey=='$(1)'].OutputValue" --output text)

.PHONY: deploy push outputs destroy

deploy:
	aws cloudformation deploy --stack-name $(STACK) --template-file template.yaml \
	    --capabilities CAPABILITY_IAM --parameter-overrides EnvironmentName=$(STACK) ImageTag=$(TAG) $(PARAMS)

push:
	$(eval REPO := $(call output,RepositoryUri))
	aws ecr get-login-password | docker login --username AWS --password-stdin $(firstword $(subst /, ,$(REPO)))
	docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(REPO):$(TAG) -t $(REPO):latest .
	docker push $(REPO):$(TAG)
	docker push $(REPO):latest
	@echo "pushed $(REPO):$(TAG); run 'make deploy TAG=$(TAG)' so the job definition uses it"

outputs:
	aws cloudformation describe-stacks --stack-name $(STACK) --query "Stacks[0].Outputs" --output table

destroy:
	aws s3 rm --recursive s3://$(call output,Bucket)
	aws s3api delete-objects --bucket $(call output,Bucket) --delete "$$(aws s3api list-object-versions \
	    --bucket $(call output,Bucket) --query '{Objects: [Versions, DeleteMarkers][][].{Key: Key, VersionId: VersionId}}' \
	    --output json)" > /dev/null || true
	aws ecr batch-delete-image --repository-name $(STACK)-jobs --image-ids "$$(aws ecr list-images \
	    --repository-name $(STACK)-jobs --query imageIds --output json)" > /dev/null || true
	aws cloudformation delete-stack --stack-name $(STACK)
	aws cloudformation wait stack-delete-complete --stack-name $(STACK)
